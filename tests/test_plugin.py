"""The plugin as users meet it: nerfstudio's CLI discovers it, trains it offline and evaluates it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)


def test_ns_train_lists_the_methods():
    result = run("ns-train", "--help")
    assert result.returncode == 0, result.stderr
    assert "omnipose-ad" in result.stdout and "omnipose-ad-lite" in result.stdout


def test_mad_data_dataparser_subcommand_exists():
    result = run("ns-train", "omnipose-ad", "mad-data", "--help")
    assert result.returncode == 0, result.stderr
    assert "--train-views" in result.stdout and "--downscale-factor" in result.stdout


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
    result = run("ns-train", "omnipose-ad", "--data", str(tiny_class), "--max-num-iterations", "20", *common)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = out / tiny_class.name / "omnipose-ad" / "run"
    checkpoints = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    assert checkpoints, "no checkpoint written"

    eval_json = tmp_path / "eval.json"
    result = run("ns-eval", "--load-config", str(run_dir / "config.yml"), "--output-path", str(eval_json))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(eval_json.read_text())["results"]
    assert results, "ns-eval wrote no metrics"

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
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Done loading Nerfstudio checkpoint" in result.stdout
    # nerfstudio counts --max-num-iterations from the resumed step (19): the run continues to step 44.
    resumed = out / tiny_class.name / "omnipose-ad" / "resumed" / "nerfstudio_models"
    assert [p.name for p in resumed.glob("step-*.ckpt")] == ["step-000000044.ckpt"]


def test_plugin_import_is_light():
    """Importing the dataparser entry point must not pull in pipelines or trainers (circular-import trap)."""
    code = (
        "import sys; import pad_nerfstudio.data.mad_dataparser; "
        "bad = [m for m in ('nerfstudio.pipelines.base_pipeline', 'nerfstudio.engine.trainer', "
        "'nerfstudio.configs.method_configs') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
