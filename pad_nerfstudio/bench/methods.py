"""How each benchmark method trains and evaluates one class: `omnipose-ad`, `patchcore`, `nearest-view`.

`omnipose-ad` goes through exactly the code paths of the command line: nerfstudio's `ns-train` entry point
on a copy of the registered method config, then `eval_setup` and `get_average_eval_image_metrics`, which is
what `ns-eval` runs. The baselines build their detector on the same `mad-data` training split and are
evaluated by `evaluate_detector`, the pipeline's protocol. Every runner returns the metrics dict of `ns-eval`
plus the training time; the benchmark runner adds the bookkeeping (result files, logs, skipping).
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Literal, Optional, Tuple

import torch

from pad_nerfstudio.bench.evaluate import ProgressCallback, evaluate_detector, load_split, no_progress
from pad_nerfstudio.bench.plan import BenchRun
from pad_nerfstudio.bench.store import read_json, write_json_atomic

__all__ = [
    "MethodOptions",
    "RunContext",
    "Runner",
    "RUNNERS",
    "RELEVANT_OPTIONS",
    "run_omnipose_ad",
    "final_checkpoint",
    "run_patchcore",
    "run_nearest_view",
]

REPORT_FOLDER = "report"
"""Sub-folder of a run holding what `ns-eval --render-output-path` writes: panels, scores.csv, curves."""


@dataclass
class MethodOptions:
    """Options shared by the methods of one benchmark (stored with every result)."""

    preset: Literal["auto", "full", "lite"] = "auto"
    """omnipose-ad preset: "full" = `omnipose-ad` (GPU settings, scales itself down without CUDA), "lite" =
    `omnipose-ad-lite` (CPU), "auto" = full when CUDA is available, else lite."""
    max_num_iterations: Optional[int] = None
    """Override of the omnipose-ad training steps (smoke runs); None = the preset's."""
    downscale_factor: int = 1
    """mad-data downscale factor for every method (MAD-Sim: 4 for 800 -> 200 px)."""
    patchcore_coreset_ratio: float = 0.1
    """Fraction of the PatchCore memory bank kept by the greedy coreset."""

    def resolved_preset(self) -> str:
        if self.preset == "auto":
            return "full" if torch.cuda.is_available() else "lite"
        return self.preset

    def describe(self) -> Dict[str, Any]:
        return {**asdict(self), "preset": self.resolved_preset()}


@dataclass
class RunContext:
    """Everything a method runner needs for one run."""

    run: BenchRun
    class_dir: Path
    run_dir: Path
    options: MethodOptions
    force: bool = False
    """Redo every stage (also a finished omnipose-ad training)."""
    progress: ProgressCallback = no_progress

    @property
    def device(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"


Runner = Callable[[RunContext], Dict[str, Any]]
"""A method: returns {"metrics": ns-eval's metrics dict, "train_seconds": float, "details": {...}}."""


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------ omnipose-ad
def omnipose_trainer_config(context: RunContext):
    """The registered omnipose-ad TrainerConfig for this run (what `ns-train omnipose-ad[-lite] --data ...` builds)."""
    from pad_nerfstudio.method_configs import omnipose_ad, omnipose_ad_lite

    preset = context.options.resolved_preset()
    config = copy.deepcopy((omnipose_ad if preset == "full" else omnipose_ad_lite).config)
    config.pipeline.datamanager.data = context.class_dir
    dataparser = config.pipeline.datamanager.dataparser
    dataparser.data = context.class_dir
    dataparser.train_views = context.run.train_views
    dataparser.downscale_factor = context.options.downscale_factor
    config.output_dir = (context.run_dir / "nerfstudio").resolve()
    config.experiment_name = context.run.class_name
    config.timestamp = "bench"
    config.vis = "tensorboard"
    if context.options.max_num_iterations is not None:
        config.max_num_iterations = context.options.max_num_iterations
    return config


def final_checkpoint(config) -> Path:
    """The checkpoint nerfstudio writes when a training of ``config`` runs to its end (``step-<last step>.ckpt``)."""
    return Path(config.get_checkpoint_dir()) / f"step-{config.max_num_iterations - 1:09d}.ckpt"


def run_omnipose_ad(context: RunContext) -> Dict[str, Any]:
    """Train with nerfstudio's ns-train entry point, then evaluate like ns-eval.

    A training counts as finished only when its final checkpoint exists; it is then recorded in ``trained.json``
    and a rerun after a failed evaluation reuses it (unless forced), because training is the expensive half on a
    full benchmark. nerfstudio's ns-train catches Ctrl-C and returns as if done: a missing final checkpoint after
    it is re-raised as the interruption it was, so the run is redone next time.
    """
    from nerfstudio.scripts.train import main as ns_train
    from nerfstudio.utils.eval_utils import eval_setup

    config = omnipose_trainer_config(context)
    config_path = config.get_base_dir() / "config.yml"
    checkpoint_path = final_checkpoint(config)
    marker_path = context.run_dir / "trained.json"
    wanted = {"max_num_iterations": config.max_num_iterations, "method_name": config.method_name}
    marker = read_json(marker_path) if not context.force else None
    reuse = (
        marker is not None
        and config_path.is_file()
        and checkpoint_path.is_file()
        and {k: marker.get(k) for k in wanted} == wanted
    )
    if reuse:
        train_seconds = float(marker["train_seconds"])
        print(f"Reusing the finished training of {config_path} ({train_seconds:.0f} s)")
    else:
        marker_path.unlink(missing_ok=True)
        # Checkpoints of an earlier, unfinished training would be loaded by eval_setup (it takes the latest).
        for stale in Path(config.get_checkpoint_dir()).glob("step-*.ckpt"):
            stale.unlink()
        context.progress(f"training ({config.max_num_iterations} steps)", 0, 1)
        started = time.perf_counter()
        ns_train(config)
        train_seconds = time.perf_counter() - started
        if not checkpoint_path.is_file():
            raise KeyboardInterrupt(f"training stopped before its final checkpoint {checkpoint_path} was written")
        write_json_atomic(marker_path, {**wanted, "train_seconds": train_seconds, "config": str(config_path)})
        _free_memory()

    context.progress("evaluating (ns-eval)", 0, 1)
    _, pipeline, checkpoint, step = eval_setup(config_path, test_mode="test")
    try:
        metrics = pipeline.get_average_eval_image_metrics(output_path=context.run_dir / REPORT_FOLDER)
    finally:
        del pipeline
        _free_memory()
    details = {
        "config": str(config_path),
        "checkpoint": str(checkpoint),
        "step": int(step),
        "method_name": config.method_name,
        "max_num_iterations": config.max_num_iterations,
    }
    return {"metrics": metrics, "train_seconds": train_seconds, "details": details}


# ------------------------------------------------------------------------------------------------------ baselines
def _training_images(context: RunContext):
    train = load_split(context.class_dir, "train", context.run.train_views, context.options.downscale_factor)
    context.progress("loading training views", 0, len(train))
    images = [train.get_image_float32(i) for i in range(len(train))]
    return train, images


def _evaluate(context: RunContext, detector) -> Dict[str, Any]:
    queries = load_split(context.class_dir, "test", context.run.train_views, context.options.downscale_factor)
    return evaluate_detector(detector, queries, context.run_dir / REPORT_FOLDER, progress=context.progress)


def run_patchcore(context: RunContext) -> Dict[str, Any]:
    """PatchCore: memory bank from the training views (the "training"), then the PAD protocol."""
    from pad_nerfstudio.bench.patchcore import PatchCoreConfig

    _, images = _training_images(context)
    context.progress("memory bank and coreset", 0, 1)
    started = time.perf_counter()
    config = PatchCoreConfig(coreset_ratio=context.options.patchcore_coreset_ratio)
    patchcore = config.setup().to(context.device).fit(images)
    train_seconds = time.perf_counter() - started
    metrics = _evaluate(context, patchcore)
    details = {
        "training_views": len(images),
        "memory_bank": patchcore.bank_size,
        "coreset": int(patchcore.index.ntotal),
        "coreset_ratio": config.coreset_ratio,
        "reweight": config.reweight,
        "layers": list(config.layers),
        "backbone": config.backbone,
    }
    del patchcore
    _free_memory()
    return {"metrics": metrics, "train_seconds": train_seconds, "details": details}


def run_nearest_view(context: RunContext) -> Dict[str, Any]:
    """Nearest training view as the reference: the pipeline's retrieval and scorer, no radiance field."""
    from pad_nerfstudio.bench.nearest_view import NearestViewDetector

    train, images = _training_images(context)
    context.progress("retrieval index", 0, 1)
    started = time.perf_counter()
    detector = NearestViewDetector(images, train.cameras.camera_to_worlds, device=context.device)
    train_seconds = time.perf_counter() - started
    metrics = _evaluate(context, detector)
    del detector
    _free_memory()
    return {"metrics": metrics, "train_seconds": train_seconds, "details": {"training_views": len(images)}}


RELEVANT_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "omnipose-ad": ("preset", "max_num_iterations", "downscale_factor"),
    "patchcore": ("patchcore_coreset_ratio", "downscale_factor"),
    "nearest-view": ("downscale_factor",),
}
"""The `MethodOptions` fields that change each method's results (a stored result with others is stale)."""

RUNNERS: Dict[str, Runner] = {
    "omnipose-ad": run_omnipose_ad,
    "patchcore": run_patchcore,
    "nearest-view": run_nearest_view,
}
"""The method of each name in `plan.METHODS`."""
