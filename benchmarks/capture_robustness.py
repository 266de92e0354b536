"""Clean renders against real-looking captures: the same objects, trained and evaluated in both capture styles.

For every image size, `pad-synth` writes the classes twice, ``--style clean`` and ``--style real`` (glossy
highlights, cast shadows, per-image exposure and white balance, blur, sensor noise, in training and test
images alike). `omnipose-ad-lite` is trained on each class with `ns-train`'s entry point and evaluated as
`ns-eval` does; the ablations switch one compensation off on the real-looking data:

- ``no-appearance``: no per-training-image colour transform (`--pipeline.model.appearance-compensation False`);
- ``view-dependent``: colour may depend on the viewing direction (`--pipeline.model.view-dependent True`);
- ``no-colour-fit``: the query's exposure is not fitted, neither in pose alignment nor in scoring (evaluation
  only; reuses the default training).

Prints one table, a row per (size, style, variant): image AUROC (all and per defect type), pixel AUROC, AUPRO,
pose error median and 95th percentile, training seconds and seconds per query, each the mean over the classes
(per-class rows are in OUT/results.md). Finished runs are skipped, so an interrupted benchmark resumes.

    python benchmarks/capture_robustness.py --out /tmp/capture --classes gorilla,unicorn,mallard --sizes 160,320
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
from runs import IMAGE_AUROC_COLUMNS, evaluate_run, markdown_table, numeric, train_lite

from pad_nerfstudio.synth.generate import resolve_class_names

COLUMNS = {
    **IMAGE_AUROC_COLUMNS,
    "pixel_auroc": ("pixel AUROC", "{:.3f}"),
    "pixel_aupro": ("AUPRO", "{:.3f}"),
    "pose_rot_err_deg_median": ("pose median °", "{:.3f}"),
    "pose_rot_err_deg_p95": ("pose p95 °", "{:.3f}"),
    "train_seconds": ("train s", "{:.0f}"),
    "seconds_per_query": ("s / query", "{:.1f}"),
}


@dataclass
class Variant:
    """One configuration of the method: what it changes at training and at evaluation."""

    name: str
    train: Callable[[Any], None] = lambda config: None
    """Edits the TrainerConfig before training."""
    evaluate: Callable[[Any], None] = lambda pipeline_config: None
    """Edits the loaded pipeline's config before the first query."""
    trains_like: str = ""
    """Name of the variant whose training this one reuses (evaluation-only ablations)."""
    styles: tuple = ("clean", "real")


def _no_colour_fit(pipeline_config) -> None:
    pipeline_config.scorer.colour_fit = False
    for round_config in pipeline_config.localisation.rounds:
        round_config.alignment.fit_colour = False


VARIANTS: Dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("default"),
        Variant(
            "no-appearance",
            train=lambda c: setattr(c.pipeline.model, "appearance_compensation", False),
            styles=("real",),
        ),
        Variant("view-dependent", train=lambda c: setattr(c.pipeline.model, "view_dependent", True), styles=("real",)),
        Variant("no-colour-fit", evaluate=_no_colour_fit, trains_like="default", styles=("real",)),
    )
}


@dataclass
class Job:
    size: int
    style: str
    class_dir: Path
    variant: Variant
    out: Path
    max_num_iterations: int | None = None
    results: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.size}px/{self.style}/{self.class_dir.name}/{self.variant.name}"

    def run_dir(self, variant: str | None = None) -> Path:
        return self.out / "runs" / f"{self.size}px" / self.style / self.class_dir.name / (variant or self.variant.name)


def generate(out: Path, style: str, size: int, classes: str, n_good: int, n_defect: int) -> Path:
    """The pad-synth dataset of one style and size; classes already there are kept (later invocations reuse them)."""
    from pad_nerfstudio.synth.cli import main as pad_synth

    root = out / "data" / f"{style}-{size}px"
    missing = [name for name in resolve_class_names(classes) if not (root / name).is_dir()]
    if missing:
        argv = ["--out", str(root), "--classes", ",".join(missing), "--size", str(size), "--style", style]
        argv += ["--n-test-good", str(n_good), "--n-test-defect", str(n_defect)]
        if pad_synth(argv) != 0:
            raise SystemExit(f"pad-synth failed for {root}")
    return root


def train(job: Job) -> tuple[Path, float]:
    """Train (or reuse) the field of a job's class and variant; returns its config.yml and training seconds."""
    name = job.variant.trains_like or job.variant.name
    return train_lite(job.class_dir, job.run_dir(name), VARIANTS[name].train, job.max_num_iterations)


def run(job: Job) -> Dict[str, Any]:
    result_path = job.run_dir() / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    job.run_dir().mkdir(parents=True, exist_ok=True)
    config_path, train_seconds = train(job)
    metrics = evaluate_run(config_path, job.run_dir() / "report", job.variant.evaluate)
    result = {**numeric(metrics), "train_seconds": train_seconds}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="data, runs and results go here")
    parser.add_argument("--classes", default="gorilla,unicorn,mallard", help="pad-synth class names or a count")
    parser.add_argument("--sizes", default="160", help="comma-separated image sizes in px")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--n-test-good", type=int, default=12)
    parser.add_argument("--n-test-defect", type=int, default=12, help="per defect type")
    parser.add_argument("--max-num-iterations", type=int, default=None, help="training steps (default: the preset's)")
    args = parser.parse_args()

    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    jobs: List[Job] = []
    for size in (int(s) for s in args.sizes.split(",")):
        for style in ("clean", "real"):
            variants = [VARIANTS[v] for v in args.variants.split(",") if style in VARIANTS[v].styles]
            if not variants:
                continue
            root = generate(args.out, style, size, args.classes, args.n_test_good, args.n_test_defect)
            for name in resolve_class_names(args.classes):
                jobs.extend(Job(size, style, root / name, v, args.out, args.max_num_iterations) for v in variants)

    per_class, grouped = [], {}
    for job in jobs:
        print(f"== {job.key}", flush=True)
        job.results = run(job)
        per_class.append((job.key, job.results))
        grouped.setdefault(f"{job.size}px {job.style} {job.variant.name}", []).append(job.results)
    means = [
        (name, {k: float(np.nanmean([r.get(k, np.nan) for r in rs])) for k in COLUMNS}) for name, rs in grouped.items()
    ]
    summary = markdown_table(means, COLUMNS)
    (args.out / "results.md").write_text(
        f"## Mean over classes\n\n{summary}\n\n## Per class\n\n{markdown_table(per_class, COLUMNS)}\n"
    )
    print(summary)
    print(f"\nPer-class rows: {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
