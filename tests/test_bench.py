"""pad-bench: run plan and shards, resumability, atomic results, the report and its correlations, real baselines."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pad_nerfstudio.bench import runner as runner_module
from pad_nerfstudio.bench.cli import main as bench_main
from pad_nerfstudio.bench.methods import RUNNERS, MethodOptions
from pad_nerfstudio.bench.plan import (
    BenchOptionError,
    BenchRun,
    parse_methods,
    parse_shard,
    parse_train_views,
    plan_runs,
    resolve_classes,
    run_dir,
    shard_runs,
)
from pad_nerfstudio.bench.report import correlation, summarise, write_benchmark_report
from pad_nerfstudio.bench.runner import execute_runs
from pad_nerfstudio.bench.store import RESULT_FILE, load_results, read_result, write_json_atomic

CLASSES = ["01Gorilla", "02Unicorn", "03Mallard", "16Cat"]
METHODS = ["omnipose-ad", "patchcore", "nearest-view"]


# ------------------------------------------------------------------------------------------------ plan and shards
def test_plan_is_canonical_and_shards_cover_every_run_once():
    plan = plan_runs(CLASSES, METHODS, [None, 100, 50])
    assert len(plan) == len(set(plan)) == 4 * 3 * 3
    assert plan == plan_runs(CLASSES[::-1], METHODS[::-1], [50, None, 100])  # order of the options is irrelevant
    for count in (1, 2, 3, 5, 7, 40):
        shards = [shard_runs(plan, index, count) for index in range(count)]
        flat = [run for shard in shards for run in shard]
        assert sorted(flat, key=BenchRun.sort_key) == plan  # every run exactly once
        assert len(flat) == len(set(flat))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
        assert shards == [shard_runs(list(reversed(plan)), index, count) for index in range(count)]  # deterministic


def test_option_parsing():
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(BenchOptionError):
            parse_shard(bad)
    assert parse_train_views("210,100,50") == [210, 100, 50]
    assert parse_train_views("all") == [None]
    with pytest.raises(BenchOptionError):
        parse_train_views("many")
    assert parse_methods("all") == METHODS
    with pytest.raises(BenchOptionError, match="Unknown method"):
        parse_methods("patchcore,draem")


def test_resolve_classes(tiny_class):
    root = tiny_class.parent
    assert resolve_classes(root) == [tiny_class]
    assert resolve_classes(root, "gorilla") == [tiny_class]
    assert resolve_classes(tiny_class) == [tiny_class]  # a class folder on its own
    with pytest.raises(BenchOptionError, match="No class 'cat'"):
        resolve_classes(root, "cat")


# ------------------------------------------------------------------------------------------------ runner
def _fake_metrics(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image_auroc": float(rng.uniform(0.5, 1)),
        "pixel_auroc": float(rng.uniform(0.5, 1)),
        "pixel_aupro": float(rng.uniform(0.3, 1)),
        "seconds_per_query": 1.5,
        "num_queries": 4,
    }


class CountingRunner:
    """A method that only counts its calls (and fails or is interrupted on request)."""

    def __init__(self, error: BaseException | None = None):
        self.calls = []
        self.error = error

    def __call__(self, context):
        self.calls.append(context.run.key)
        print("working on", context.run.key)  # goes to the run's log
        if self.error is not None:
            raise self.error
        queries = [{"image_path": f"test/x/{i}.png", "label": i % 2, "defect_type": "x", "score": i} for i in range(4)]
        return {"metrics": _fake_metrics(len(self.calls)), "train_seconds": 1.0, "queries": queries}


@pytest.fixture
def fake_classes(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "class_attributes", lambda class_dir: {"pad-synth": None, "images": {}})
    return {name: tmp_path / "data" / name for name in CLASSES[:2]}


def test_second_run_does_no_work(tmp_path, fake_classes):
    out = tmp_path / "bench"
    plan = plan_runs(list(fake_classes), ["patchcore", "nearest-view"], [None, 20])
    fake = CountingRunner()
    runners = {"patchcore": fake, "nearest-view": fake}
    first = execute_runs(plan, fake_classes, out, runners)
    assert len(fake.calls) == len(plan) == len(first.done) == 8
    for run in plan:
        result = read_result(run_dir(out, run) / RESULT_FILE, run)
        assert result is not None and result["train_views"] == run.train_views
        assert "working on" in (run_dir(out, run) / "log.txt").read_text()
    second = execute_runs(plan, fake_classes, out, runners)
    assert len(fake.calls) == len(plan)  # nothing was redone
    assert second.done == [] and len(second.skipped) == len(plan)
    stale = execute_runs(plan, fake_classes, out, runners, MethodOptions(downscale_factor=2))
    assert len(fake.calls) == len(plan) and len(stale.stale) == len(plan)  # reported, not silently redone
    forced = execute_runs(plan[:3], fake_classes, out, runners, force=True)
    assert len(fake.calls) == len(plan) + 3 and len(forced.done) == 3


def test_failed_or_interrupted_run_leaves_no_result(tmp_path, fake_classes):
    out = tmp_path / "bench"
    plan = plan_runs(list(fake_classes), ["patchcore"])
    failing = CountingRunner(RuntimeError("boom"))
    summary = execute_runs(plan, fake_classes, out, {"patchcore": failing})
    assert len(summary.failed) == len(plan) and not summary.done  # a failure does not stop the other runs
    for run in plan:
        assert not (run_dir(out, run) / RESULT_FILE).exists()
        assert "RuntimeError: boom" in (run_dir(out, run) / "log.txt").read_text()

    interrupted = CountingRunner(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        execute_runs(plan, fake_classes, out, {"patchcore": interrupted})
    assert len(interrupted.calls) == 1
    assert not list(out.rglob(RESULT_FILE)) and not list(out.rglob("*.tmp"))
    assert "INTERRUPTED" in (run_dir(out, plan[0]) / "log.txt").read_text()

    retried = CountingRunner()  # the next invocation redoes exactly the unfinished runs
    assert len(execute_runs(plan, fake_classes, out, {"patchcore": retried}).done) == len(plan)


class FakeTraining:
    """Stands in for nerfstudio's ns-train: writes config.yml and the checkpoints a training of N steps leaves.

    ``interrupted``: like ns-train after Ctrl-C, which it catches and returns from normally, leaving only the
    intermediate checkpoint.
    """

    def __init__(self, interrupted: bool = False):
        self.interrupted = interrupted
        self.calls = 0

    def __call__(self, config):
        self.calls += 1
        config.get_base_dir().mkdir(parents=True, exist_ok=True)
        (config.get_base_dir() / "config.yml").write_text("fake")
        checkpoints = config.get_checkpoint_dir()
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / "step-000000001.ckpt").write_text("intermediate")
        if not self.interrupted:
            (checkpoints / f"step-{config.max_num_iterations - 1:09d}.ckpt").write_text("final")


def test_omnipose_run_counts_as_trained_only_with_its_final_checkpoint(tmp_path, monkeypatch):
    import nerfstudio.scripts.train
    import nerfstudio.utils.eval_utils

    from pad_nerfstudio.bench.methods import RunContext, final_checkpoint, omnipose_trainer_config, run_omnipose_ad

    class FakePipeline:
        def get_average_eval_image_metrics(self, output_path=None):
            return {"image_auroc": 0.75}

    loaded = []

    def fake_eval_setup(config_path, test_mode):
        loaded.append(sorted(p.name for p in final_checkpoint(config).parent.glob("*.ckpt")))
        return None, FakePipeline(), final_checkpoint(config), 4

    monkeypatch.setattr(nerfstudio.utils.eval_utils, "eval_setup", fake_eval_setup)
    run = BenchRun(CLASSES[0], "omnipose-ad", None)
    options = MethodOptions(preset="lite", max_num_iterations=5)
    context = RunContext(run, tmp_path / "data" / CLASSES[0], run_dir(tmp_path / "bench", run), options)
    config = omnipose_trainer_config(context)
    marker = context.run_dir / "trained.json"

    interrupted = FakeTraining(interrupted=True)
    monkeypatch.setattr(nerfstudio.scripts.train, "main", interrupted)
    with pytest.raises(KeyboardInterrupt, match="step-000000004.ckpt"):  # the Ctrl-C ns-train swallowed
        run_omnipose_ad(context)
    assert not marker.exists() and not loaded

    finished = FakeTraining()
    monkeypatch.setattr(nerfstudio.scripts.train, "main", finished)
    output = run_omnipose_ad(context)  # the interrupted training is redone, not reused
    assert finished.calls == 1 and output["metrics"] == {"image_auroc": 0.75}
    assert json.loads(marker.read_text())["max_num_iterations"] == 5
    assert loaded[-1] == ["step-000000001.ckpt", "step-000000004.ckpt"]

    run_omnipose_ad(context)  # finished: reused
    assert finished.calls == 1
    final_checkpoint(config).unlink()  # trained.json alone does not make a training
    run_omnipose_ad(context)
    assert finished.calls == 2


def _cli_classes(tmp_path, monkeypatch):
    from mad_fixtures import make_mad_class

    monkeypatch.setattr(runner_module, "class_attributes", lambda class_dir: {"pad-synth": None, "images": {}})
    for name in CLASSES[:2]:
        make_mad_class(tmp_path / "data", name, n_train=4, size=8, test_counts={"good": 1})
    return ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "bench")]


def test_failed_run_is_one_terminal_line_and_the_report_still_comes(tmp_path, monkeypatch, capsys):
    from pad_nerfstudio.bench import methods  # the command line looks its runners up there when it runs

    args = _cli_classes(tmp_path, monkeypatch)
    failing = CountingRunner(RuntimeError("CUDA out of memory\nTried to allocate 2 GiB"))
    monkeypatch.setattr(methods, "RUNNERS", {"patchcore": CountingRunner(), "nearest-view": failing})
    assert bench_main([*args, "--methods", "patchcore,nearest-view"]) == 1
    printed = capsys.readouterr().out
    for name in CLASSES[:2]:
        log = run_dir(tmp_path / "bench", BenchRun(name, "nearest-view", None)) / "log.txt"
        line = f"{name}/nearest-view/all-views failed: RuntimeError: CUDA out of memory (log: {log})"
        assert line in printed.splitlines()  # printed when it happens, unwrapped
        assert "Tried to allocate" in log.read_text()
    assert "Tried to allocate" not in printed and "Traceback" not in printed
    markdown = (tmp_path / "bench" / "results.md").read_text()
    assert f"| {CLASSES[0]} |" in markdown and "patchcore" in markdown


def test_ctrl_c_exits_130_with_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    from pad_nerfstudio.bench import methods  # the command line looks its runners up there when it runs

    args = _cli_classes(tmp_path, monkeypatch)
    interrupted = CountingRunner(KeyboardInterrupt())
    monkeypatch.setattr(methods, "RUNNERS", {"patchcore": interrupted})
    assert bench_main([*args, "--methods", "patchcore"]) == 130
    printed = capsys.readouterr().out
    assert "interrupted; finished runs are kept" in printed and "Traceback" not in printed
    assert len(interrupted.calls) == 1 and not list((tmp_path / "bench").rglob(RESULT_FILE))
    resumed = CountingRunner()
    monkeypatch.setattr(methods, "RUNNERS", {"patchcore": resumed})
    assert bench_main([*args, "--methods", "patchcore"]) == 0
    assert len(resumed.calls) == 2 and len(list((tmp_path / "bench").rglob(RESULT_FILE))) == 2


def test_atomic_write_keeps_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "run" / RESULT_FILE
    write_json_atomic(path, {"metrics": {"image_auroc": 0.5}})
    with pytest.raises(TypeError):  # fails half-way through serialising, after the temporary file was opened
        write_json_atomic(path, {"metrics": {"image_auroc": 0.9}, "bad": object()})
    assert json.loads(path.read_text()) == {"metrics": {"image_auroc": 0.5}}
    assert [p.name for p in path.parent.iterdir()] == [RESULT_FILE]
    with pytest.raises(ValueError):  # NaN is not JSON: refused rather than written
        write_json_atomic(tmp_path / "nan.json", {"x": float("nan")})
    assert not list(tmp_path.glob("*nan*"))


# ------------------------------------------------------------------------------------------------ report
def _store_fake_results(out: Path, settings=(None,)) -> list:
    attributes = {
        name: {"shape_complexity": 0.1 * (i + 1), "colour_contrast": 20.0 + 7 * i**2} for i, name in enumerate(CLASSES)
    }
    seed = 0
    for views in settings:
        for name in CLASSES:
            for method in METHODS:
                seed += 1
                run = BenchRun(name, method, views)
                metrics = _fake_metrics(seed)
                if method == "omnipose-ad":
                    metrics["pose_rot_err_deg_median"] = 0.5
                labels = [0, 0, 1, 1, 1]
                result = {
                    "class_name": name,
                    "method": method,
                    "setting": run.setting,
                    "train_views": views,
                    "metrics": metrics,
                    "train_seconds": 10.0,
                    "queries": [{"label": label, "score": s} for label, s in zip(labels, np.random.rand(5).tolist())],
                    "attributes": {"pad-synth": attributes[name], "images": {"shape_complexity": 0.3}},
                    "options": {"downscale_factor": 1},
                }
                write_json_atomic(run_dir(out, run) / RESULT_FILE, result)
    return load_results(out)


def test_report_from_stored_results(tmp_path):
    out = tmp_path / "bench"
    results = _store_fake_results(out, settings=(None, 50))
    summary = write_benchmark_report(out)
    markdown = (out / "results.md").read_text()
    for name in CLASSES:
        assert f"| {name} |" in markdown
    for method in METHODS:
        chosen = [r["metrics"] for r in results if r["method"] == method and r["setting"] == "all-views"]
        pixel = np.mean([m["pixel_auroc"] for m in chosen])
        image = np.mean([m["image_auroc"] for m in chosen])
        assert f"**{100 * pixel:.1f} / {100 * image:.1f}**" in markdown  # the mean row
        assert summary["means"]["all-views"][method]["pixel_auroc"] == pytest.approx(pixel)
    assert "Table 3 layout" in markdown and "50 training views" in markdown
    assert "Attribute study" in markdown and "pad-synth" in markdown
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(results) == 2 * len(CLASSES) * len(METHODS)
    assert sorted(float(r["image_auroc"]) for r in rows) == pytest.approx(
        sorted(r["metrics"]["image_auroc"] for r in results), rel=1e-5
    )
    stored = json.loads((out / "results.json").read_text())
    assert stored["missing"] == [] and len(stored["runs"]) == len(results)
    for plot in stored["plots"]:
        assert (out / plot).stat().st_size > 0
    assert "plots/train_views.png" in stored["plots"]

    # A missing run is reported, and the CLI's report subcommand rebuilds from what is there.
    (run_dir(out, BenchRun(CLASSES[0], "patchcore", 50)) / RESULT_FILE).unlink()
    assert bench_main(["report", "--out", str(out), "--no-plots"]) == 0
    assert json.loads((out / "results.json").read_text())["missing"] == [f"{CLASSES[0]}/patchcore/50-views"]
    assert bench_main(["report", "--out", str(tmp_path / "empty")]) == 2


def test_correlations_match_scipy(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12), rng.normal(size=12)
    ours = correlation(x, y)
    assert ours["pearson_r"] == pytest.approx(stats.pearsonr(x, y)[0])
    assert ours["pearson_p"] == pytest.approx(stats.pearsonr(x, y)[1])
    assert ours["spearman_rho"] == pytest.approx(stats.spearmanr(x, y)[0])
    assert ours["spearman_p"] == pytest.approx(stats.spearmanr(x, y)[1])
    # A few classes: exact permutation p-values (scipy's asymptotic Spearman p is 0 for a perfect ranking).
    few = correlation([0.1, 0.5, 0.3, 0.9], [2.0, 7.0, 1.0, 9.0])
    assert few["spearman_rho"] == pytest.approx(stats.spearmanr([0.1, 0.5, 0.3, 0.9], [2.0, 7.0, 1.0, 9.0])[0])
    assert few["spearman_p"] == pytest.approx(8 / 24)  # 8 of the 24 orderings have |rho| >= 0.8
    assert correlation([1, 2, 3], [1, 2, 3])["spearman_p"] == pytest.approx(1 / 3)  # 2 of 6 orderings
    assert correlation([1, 2], [3, 4])["pearson_r"] is None  # too few classes
    assert correlation([1, 1, 1], [3, 4, 5])["spearman_rho"] is None  # constant attribute
    assert correlation([1, 2, 3, None], [3, 1, 2, 8])["n"] == 3  # missing values dropped

    results = _store_fake_results(tmp_path / "bench")
    summary = summarise(results)
    checked = 0
    for row in summary["correlations"]:
        chosen = [r for r in results if r["method"] == row["method"]]
        attribute = [r["attributes"]["pad-synth"][row["attribute"]] for r in chosen]
        metric = [r["metrics"][row["metric"]] for r in chosen]
        assert row["n"] == len(CLASSES)
        assert row["pearson_r"] == pytest.approx(stats.pearsonr(attribute, metric)[0])
        assert row["spearman_rho"] == pytest.approx(stats.spearmanr(attribute, metric)[0])
        checked += 1
    assert checked == len(METHODS) * 3 * 2


# ------------------------------------------------------------------------------------------------ real baselines
def test_baselines_on_tiny_class(tmp_path, tiny_class):
    out = tmp_path / "bench"
    plan = plan_runs([tiny_class.name], ["patchcore", "nearest-view"], [20])
    summary = execute_runs(plan, {tiny_class.name: tiny_class}, out, RUNNERS, MethodOptions(), fail_fast=True)
    assert len(summary.done) == 2
    for run in plan:
        result = read_result(run_dir(out, run) / RESULT_FILE, run)
        metrics = result["metrics"]
        for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max"):
            assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (run.key, key, metrics[key])
        assert metrics["num_queries"] == len(result["queries"]) == 9
        assert result["details"]["training_views"] == 20
        assert result["attributes"]["pad-synth"]["shape_complexity"] > 0
        assert (run_dir(out, run) / "report" / "curves.png").is_file()
    nearest = read_result(run_dir(out, plan[0]) / RESULT_FILE, plan[0])
    assert nearest["method"] == "nearest-view" and math.isfinite(nearest["metrics"]["pose_rot_err_deg_median"])
