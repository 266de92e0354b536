"""The plugin as users meet it: nerfstudio's CLI discovers it, trains it offline and evaluates it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)


def test_ns_train_knows_both_methods_and_the_dataparser(capsys):
    """ns-train's own command line, parsed in-process (a process start costs ~15 s of nerfstudio imports; the round
    trip below runs the real command): both presets and the mad-data subcommand with its options, and nerfstudio's
    discovery, which `ns-train --help` lists, finds both presets."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.plugins.registry import discover_methods

    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(AnnotatedBaseConfigUnion, args=["omnipose-ad-lite", "mad-data", "--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--train-views" in help_text and "--downscale-factor" in help_text
    args = ["omnipose-ad", "--data", "mad/gorilla", "mad-data", "--train-views", "60", "--downscale-factor", "2"]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
    dataparser = config.pipeline.datamanager.dataparser
    assert config.method_name == "omnipose-ad" and config.data == Path("mad/gorilla")
    assert type(dataparser).__name__ == "MADDataParserConfig"
    assert (dataparser.train_views, dataparser.downscale_factor) == (60, 2)
    methods, descriptions = discover_methods()
    assert {"omnipose-ad", "omnipose-ad-lite"} <= set(methods) and descriptions["omnipose-ad"]


def test_method_picks_cpu_without_cuda():
    import torch
    from pad_nerfstudio.method_configs import omnipose_ad, omnipose_ad_lite

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert omnipose_ad.config.machine.device_type == expected
    assert omnipose_ad_lite.config.machine.device_type == expected


def test_model_builds_offline_without_downloads(monkeypatch):
    """Constructing the model must not touch the network (nerfacto's LPIPS would)."""
    import socket

    import torch
    from nerfstudio.data.scene_box import SceneBox

    from pad_nerfstudio.field.model import OmniposeModelConfig

    def no_network(*args, **kwargs):
        raise AssertionError("network access during model construction")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = OmniposeModelConfig().setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_ns_train_then_ns_eval_and_resume(tiny_class, tmp_path):
    """`ns-train omnipose-ad` with no device flag writes a checkpoint that ns-eval and --load-dir accept."""
    out = tmp_path / "outputs"
    common = [
        "--output-dir",
        str(out),
        "--vis",
        "tensorboard",
        "--timestamp",
        "run",
        "--pipeline.datamanager.train-num-rays-per-batch",
        "1024",
    ]
    # 60 of the 210 views (the dataparser's option, end to end): ns-eval's pose index is built over fewer of them.
    views = ["mad-data", "--train-views", "60"]
    result = run("ns-train", "omnipose-ad", "--data", str(tiny_class), "--max-num-iterations", "20", *common, *views)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = out / tiny_class.name / "omnipose-ad" / "run"
    checkpoints = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    assert checkpoints, "no checkpoint written"

    eval_json, report = tmp_path / "eval.json", tmp_path / "report"
    result = run(
        "ns-eval",
        "--load-config",
        str(run_dir / "config.yml"),
        "--output-path",
        str(eval_json),
        "--render-output-path",
        str(report),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Caching all 60 images" in result.stdout + result.stderr  # the run's dataparser settings came along
    check_eval_outputs(json.loads(eval_json.read_text())["results"], report, tiny_class)

    result = run(
        "ns-train",
        "omnipose-ad",
        "--data",
        str(tiny_class),
        "--max-num-iterations",
        "25",
        "--load-dir",
        str(run_dir / "nerfstudio_models"),
        *common[:-2],
        "--timestamp",
        "resumed",
        *views,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Done loading Nerfstudio checkpoint" in result.stdout
    # nerfstudio counts --max-num-iterations from the resumed step (19): the run continues to step 44.
    resumed = out / tiny_class.name / "omnipose-ad" / "resumed" / "nerfstudio_models"
    assert [p.name for p in resumed.glob("step-*.ckpt")] == ["step-000000044.ckpt"]


def check_eval_outputs(results: dict, report: Path, class_dir: Path) -> None:
    """ns-eval's metrics keys and report files for a pad-synth class (which has test_poses.json)."""
    queries = sorted(p.relative_to(class_dir).as_posix() for p in (class_dir / "test").glob("*/*.png"))
    defect_types = sorted({Path(q).parent.name for q in queries} - {"good"})
    expected = {"image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max", "num_queries"}
    expected |= {"seconds_per_query", "pose_rot_err_deg_median", "pose_trans_err_pct_median", "pose_within_2deg"}
    expected |= {"pose_within_quarter_deg", "pose_beyond_half_deg"}
    expected |= {"pose_rot_err_deg_p95"} | {f"{level}_auroc_{t}" for level in ("image", "pixel") for t in defect_types}
    assert expected <= set(results), expected - set(results)
    assert results["num_queries"] == len(queries)
    unbounded = {"num_queries", "seconds_per_query", "pose_rot_err_deg_median", "pose_rot_err_deg_p95"}
    for key in expected - unbounded - {"pose_trans_err_pct_median"}:
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
    assert results["pose_rot_err_deg_p95"] >= results["pose_rot_err_deg_median"]

    with (report / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["image_path"] for row in rows) == queries
    assert all(row["label"] == ("0" if "/good/" in row["image_path"] else "1") for row in rows)
    assert all(float(row["rotation_error_deg"]) >= 0 for row in rows)
    poses = json.loads((report / "poses.json").read_text())
    assert sorted(poses) == queries
    for pose in poses.values():
        pose = np.asarray(pose)
        assert pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1])
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-4)
    panels = sorted(p.relative_to(report / "panels").as_posix() for p in (report / "panels").glob("*/*.png"))
    assert panels == sorted(q.removeprefix("test/") for q in queries)
    width = Image.open(class_dir / queries[0]).size[0]
    assert Image.open(report / "panels" / panels[0]).size[0] >= 4 * width  # query | reference | overlay | mask
    assert (report / "curves.png").stat().st_size > 10_000


def test_plugin_import_is_light():
    """Importing the dataparser entry point must not pull in pipelines or trainers (circular-import trap)."""
    code = (
        "import sys; import pad_nerfstudio.data.mad_dataparser; "
        "bad = [m for m in ('nerfstudio.pipelines.base_pipeline', 'nerfstudio.engine.trainer', "
        "'nerfstudio.configs.method_configs') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
