"""`pad-demo`: the default run on embedded generated data, from nothing to results in one command.

Generates the default `pad-synth` class under `data/` (once), trains the anomaly-free field with the
CPU preset through nerfstudio's own training entry point, then evaluates exactly as `ns-eval` does:
every pose-free test query is localised, its reference rendered and scored, and the PAD metrics,
heat-map panels and curves are written next to the run.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro
from rich.console import Console
from rich.table import Table

from pad_nerfstudio.cli_errors import user_errors
from pad_nerfstudio.data.mad_layout import resolve_class_dir

# nerfstudio and the method are imported in `main`, after the data is there: they take seconds (tens on a busy
# laptop) that `pad-demo --help` or a bad --data should not cost.

CONSOLE = Console()


@dataclass
class DemoConfig:
    """Generate the default class, train `omnipose-ad-lite` on it and report."""

    data: Path = Path("data/pad-synth")
    """Dataset root holding (or receiving) the generated default class."""
    class_name: str = "gorilla"
    """Class to generate and train on."""
    size: int = 200
    """Image size of the generated class, in pixels."""
    output_dir: Path = Path("outputs")
    """Where nerfstudio writes the run."""
    max_num_iterations: Optional[int] = None
    """Training steps (the preset's default when None)."""


def ensure_default_class(config: DemoConfig) -> Path:
    try:
        return resolve_class_dir(config.data / config.class_name)
    except ValueError:
        from pad_nerfstudio.synth.generate import generate_dataset

        CONSOLE.print(f"Generating the default class '{config.class_name}' under {config.data} ...")
        return generate_dataset(config.data, classes=[config.class_name], size=config.size)[0]


def main(config: DemoConfig) -> None:
    start = time.perf_counter()
    class_dir = ensure_default_class(config)
    from nerfstudio.scripts.train import main as ns_train
    from nerfstudio.utils.eval_utils import eval_setup

    from pad_nerfstudio.method_configs import omnipose_ad_lite

    trainer_config = copy.deepcopy(omnipose_ad_lite.config)
    trainer_config.pipeline.datamanager.data = class_dir
    trainer_config.output_dir = config.output_dir
    trainer_config.timestamp = "demo"
    trainer_config.vis = "tensorboard"
    if config.max_num_iterations is not None:
        trainer_config.max_num_iterations = config.max_num_iterations
    training_started = time.time()
    ns_train(trainer_config)
    # ns-train catches Ctrl-C, prints its traceback and returns: only a final checkpoint of this training says that
    # it ran to its end (one left by an earlier pad-demo is older).
    final_checkpoint = trainer_config.get_checkpoint_dir() / f"step-{trainer_config.max_num_iterations - 1:09d}.ckpt"
    if not final_checkpoint.exists() or final_checkpoint.stat().st_mtime < training_started:
        raise KeyboardInterrupt
    trained = time.perf_counter()

    # What `ns-eval --load-config C --output-path eval.json --render-output-path inspection` does.
    run_dir = trainer_config.get_base_dir()
    config_path = run_dir / "config.yml"
    _, pipeline, checkpoint, _ = eval_setup(config_path, test_mode="test")
    report_dir = run_dir / "inspection"
    results = pipeline.get_average_eval_image_metrics(output_path=report_dir)
    benchmark_info = {
        "experiment_name": class_dir.name,
        "method_name": "omnipose-ad-lite",
        "checkpoint": str(checkpoint),
    }
    (run_dir / "eval.json").write_text(json.dumps({**benchmark_info, "results": results}, indent=2))

    table = Table(title=f"pad-demo: {class_dir.name} ({results['num_queries']} pose-free test queries)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in (
        ("image_auroc", "image AUROC"),
        ("pixel_auroc", "pixel AUROC"),
        ("pixel_aupro", "pixel AUPRO (FPR <= 0.3)"),
    ):
        table.add_row(label, f"{100 * results[key]:.1f} %")
    if "pose_rot_err_deg_median" in results:
        table.add_row("pose error, median", f"{results['pose_rot_err_deg_median']:.2f} deg")
    table.add_row("seconds per query", f"{results['seconds_per_query']:.2f} s")
    table.add_row("training time", f"{trained - start:.0f} s")
    table.add_row("total wall time", f"{time.perf_counter() - start:.0f} s")
    CONSOLE.print(table)
    CONSOLE.print(f"Heat-map panels: {report_dir / 'panels'}   curves: {report_dir / 'curves.png'}")
    CONSOLE.print(f"Metrics: {run_dir / 'eval.json'}   inspect interactively: ns-viewer --load-config {config_path}")


def entrypoint() -> None:
    """Console-script entry point (``pad-demo``); ``PAD_DEBUG=1`` shows tracebacks instead of one-line errors."""
    with user_errors("pad-demo"):
        main(tyro.cli(DemoConfig))


if __name__ == "__main__":
    entrypoint()
