"""Shared by the benchmark scripts: train `omnipose-ad-lite` (or `omnipose-ad`) on one class as `ns-train` does and
evaluate it as `ns-eval` does, each resumable (a finished training or evaluation is found again under its run
folder)."""

from __future__ import annotations

import copy
import gc
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

IMAGE_AUROC_COLUMNS = {
    "image_auroc": ("image AUROC", "{:.3f}"),
    "image_auroc_Burrs": ("Burrs", "{:.3f}"),
    "image_auroc_Missing": ("Missing", "{:.3f}"),
    "image_auroc_Stains": ("Stains", "{:.3f}"),
}
"""Image AUROC overall and per MAD defect type, columns shared by the benchmark tables (see markdown_table)."""


def train_lite(
    class_dir: Path,
    run_dir: Path,
    edit: Optional[Callable[[Any], None]] = None,
    max_num_iterations: Optional[int] = None,
    method: str = "omnipose-ad-lite",
) -> tuple[Path, float]:
    """Train (or reuse) ``method`` (`omnipose-ad-lite` or `omnipose-ad`) on ``class_dir`` into ``run_dir``; returns
    its config.yml and the training seconds. ``edit`` changes the TrainerConfig before training."""
    from nerfstudio.scripts.train import main as ns_train
    from pad_nerfstudio.method_configs import omnipose_ad, omnipose_ad_lite

    marker = run_dir / "trained.json"
    if marker.exists():
        stored = json.loads(marker.read_text())
        if Path(stored["config"]).exists():
            return Path(stored["config"]), float(stored["train_seconds"])
    run_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy({"omnipose-ad-lite": omnipose_ad_lite, "omnipose-ad": omnipose_ad}[method].config)
    config.pipeline.datamanager.data = class_dir
    config.pipeline.datamanager.dataparser.data = class_dir
    config.output_dir = (run_dir / "nerfstudio").resolve()
    config.experiment_name = class_dir.name
    config.timestamp = "bench"
    config.vis = "tensorboard"
    if max_num_iterations:
        config.max_num_iterations = max_num_iterations
    if edit is not None:
        edit(config)
    started = time.perf_counter()
    ns_train(config)
    seconds = time.perf_counter() - started
    config_path = config.get_base_dir() / "config.yml"
    marker.write_text(json.dumps({"config": str(config_path), "train_seconds": seconds}))
    return config_path, seconds


def evaluate_run(config_path: Path, report_dir: Path, edit: Optional[Callable[[Any], None]] = None) -> Dict[str, Any]:
    """ns-eval's metrics of a trained run; ``edit`` changes the loaded pipeline's config before the first query."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config_path, test_mode="test")
    if edit is not None:
        edit(pipeline.config)
    try:
        return pipeline.get_average_eval_image_metrics(output_path=report_dir)
    finally:
        del pipeline
        gc.collect()


def numeric(metrics: Dict[str, Any]) -> Dict[str, float]:
    """The numbers of a metrics dict (what a result.json keeps)."""
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float))}


def markdown_table(
    rows: List[Tuple[str, Dict[str, Any]]], columns: Dict[str, Tuple[str, str]], first: str = "run"
) -> str:
    """A markdown table with one row per (name, values) and one column per ``columns`` key (title, format);
    missing or NaN values show as "–"."""
    lines = [f"| {first} | " + " | ".join(title for title, _ in columns.values()) + " |"]
    lines.append("|:---|" + "---:|" * len(columns))
    for name, values in rows:
        cells = []
        for key, (_, form) in columns.items():
            value = values.get(key)
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            cells.append("–" if missing else form.format(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
