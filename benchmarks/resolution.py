"""Cost and accuracy against image size (issue #15): one pad-synth class at 200, 400 and 800 px, end to end.

For each size the class is generated (or reused), `omnipose-ad-lite` trains as ns-train does and the test
queries are evaluated as ns-eval does. Training and evaluation each run in a process of their own, so the peak
resident memory (RSS) of each is measured separately (the kernel's maxrss of that process, as /usr/bin/time
reports it). Prints one row per size: training seconds, peak RSS, seconds per query and the metrics. Finished
runs are reused.

    python benchmarks/resolution.py --out /tmp/resolution --sizes 200,400,800
    python benchmarks/resolution.py --out /tmp/resolution-hash --encoding hash   # the hash-grid field
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from runs import IMAGE_AUROC_COLUMNS, evaluate_run, markdown_table, numeric, train_lite

from pad_nerfstudio.synth.generate import resolve_class_names

COLUMNS = {
    "train_seconds": ("train s", "{:.0f}"),
    "train_peak_rss_gb": ("train peak RSS GB", "{:.2f}"),
    "seconds_per_query": ("s / query", "{:.2f}"),
    "eval_seconds": ("eval s (all queries)", "{:.0f}"),
    "eval_peak_rss_gb": ("eval peak RSS GB", "{:.2f}"),
    **IMAGE_AUROC_COLUMNS,
    "pixel_auroc": ("pixel AUROC", "{:.4f}"),
    "pixel_aupro": ("AUPRO", "{:.3f}"),
    "pose_rot_err_deg_median": ("pose median °", "{:.3f}"),
    "pose_rot_err_deg_p95": ("pose p95 °", "{:.2f}"),
}


def run_measured(command: List[str]) -> Tuple[float, float]:
    """Run ``command`` to completion; its wall-clock seconds and peak RSS in GB (from wait4's rusage)."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def worker(args: argparse.Namespace) -> None:
    """One measured stage in this process: ``train`` or ``eval`` of one size's run."""
    run_dir = args.run_dir

    def encoding(config: Any) -> None:
        config.pipeline.model.encoding = args.encoding

    if args.worker == "train":
        train_lite(args.class_dir, run_dir, edit=encoding)
    else:
        config_path = Path(json.loads((run_dir / "trained.json").read_text())["config"])
        metrics = evaluate_run(config_path, run_dir / "report")
        (run_dir / "metrics.json").write_text(json.dumps(numeric(metrics), indent=2))


def measure_size(args: argparse.Namespace, size: int, name: str) -> Dict[str, Any]:
    """Generate, train and evaluate one size (each reused when already done); the row's figures."""
    data = args.out / f"data-{size}"
    run_dir = args.out / "runs" / f"{size}px"
    result_path = run_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    if not (data / name / "transforms.json").exists():
        command = [sys.executable, "-m", "pad_nerfstudio.synth.cli", "--out", str(data), "--classes", name]
        command += ["--size", str(size), "--n-test-good", str(args.n_test_good), "--workers", "2"]
        command += ["--n-test-defect", str(args.n_test_defect)]
        subprocess.run(command, check=True)
    stage = [sys.executable, __file__, "--class-dir", str(data / name), "--run-dir", str(run_dir)]
    stage += ["--encoding", args.encoding]
    usage = run_dir / "train_usage.json"  # a reused training is not measured again: keep its first measurement
    if not usage.exists():
        print(f"== {size} px: training", flush=True)
        _, train_rss = run_measured(stage + ["--worker", "train"])
        usage.write_text(json.dumps({"train_peak_rss_gb": train_rss}))
    train_rss = json.loads(usage.read_text())["train_peak_rss_gb"]
    print(f"== {size} px: evaluating", flush=True)
    eval_seconds, eval_rss = run_measured(stage + ["--worker", "eval"])
    trained = json.loads((run_dir / "trained.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = {
        **metrics,
        "size": size,
        "train_seconds": trained["train_seconds"],
        "train_peak_rss_gb": train_rss,
        "eval_seconds": eval_seconds,
        "eval_peak_rss_gb": eval_rss,
    }
    result_path.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/resolution"), help="data, runs and results")
    parser.add_argument("--class-name", default="gorilla", help="pad-synth class name")
    parser.add_argument("--sizes", default="200,400,800", help="comma-separated image sizes")
    parser.add_argument("--encoding", choices=("vm", "hash"), default="vm", help="the field's feature grids")
    parser.add_argument("--n-test-good", type=int, default=8)
    parser.add_argument("--n-test-defect", type=int, default=8)
    parser.add_argument("--worker", choices=("train", "eval"), help=argparse.SUPPRESS)
    parser.add_argument("--class-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    (name,) = resolve_class_names(args.class_name)
    rows = [(f"{size} px", measure_size(args, int(size), name)) for size in args.sizes.split(",")]
    table = markdown_table(rows, COLUMNS, first="size")
    (args.out / "results.md").write_text(table + "\n")
    print(f"{name}, omnipose-ad-lite ({args.encoding} field), {os.cpu_count()} CPUs")
    print(table)


if __name__ == "__main__":
    main()
