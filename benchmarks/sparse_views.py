"""Dense to sparse training views (the PAD paper's Table 3), with and without the sparse-view regulariser.

Each pad-synth ring class is trained on evenly spread subsets of its 210 views (`mad-data --train-views N`, the
same option as `pad-bench --train-views`) with `omnipose-ad-lite`, once as configured and once with the
total-variation prior on the field's fine grids (`--pipeline.model.total-variation`), and evaluated as ns-eval
does. Prints one row per (views, variant), the mean over the classes; finished runs are reused.

    python benchmarks/sparse_views.py --data /tmp/sparse_data --classes gorilla --views 210,100,50,25
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from runs import evaluate_run, markdown_table, numeric, train_lite

from pad_nerfstudio.synth.generate import resolve_class_names

COLUMNS = {
    "image_auroc": ("image AUROC", "{:.3f}"),
    "pixel_auroc": ("pixel AUROC", "{:.3f}"),
    "pixel_aupro": ("AUPRO", "{:.3f}"),
    "pose_rot_err_deg_median": ("pose median °", "{:.3f}"),
    "pose_rot_err_deg_p95": ("pose p95 °", "{:.2f}"),
    "train_seconds": ("train s", "{:.0f}"),
    "seconds_per_query": ("s / query", "{:.1f}"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="pad-synth dataset root (ring captures)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sparse-views"), help="runs and results go here")
    parser.add_argument("--classes", default="gorilla", help="pad-synth class names")
    parser.add_argument("--views", default="210,100,50,25", help="training-view counts")
    parser.add_argument("--total-variation", type=float, default=0.1, help="weight of the regularised variant")
    parser.add_argument("--variants", default="default,tv", help="default and/or tv")
    args = parser.parse_args()

    rows: Dict[str, List[Dict[str, Any]]] = {}
    for name in resolve_class_names(args.classes):
        for views in (int(v) for v in args.views.split(",")):
            for variant in args.variants.split(","):
                run_dir = args.out / name / f"{views}views" / variant
                result_path = run_dir / "result.json"
                print(f"== {name} {views} views {variant}", flush=True)
                if result_path.exists():
                    result = json.loads(result_path.read_text())
                else:

                    def edit(config, views=views, variant=variant) -> None:
                        config.pipeline.datamanager.dataparser.train_views = views
                        if variant == "tv":
                            config.pipeline.model.total_variation = args.total_variation

                    config_path, seconds = train_lite(args.data / name, run_dir, edit)
                    result = {**numeric(evaluate_run(config_path, run_dir / "report")), "train_seconds": seconds}
                    result_path.write_text(json.dumps(result, indent=2))
                rows.setdefault(f"{views} views, {variant}", []).append(result)

    means = [
        (label, {k: float(np.nanmean([r.get(k, np.nan) for r in results])) for k in COLUMNS})
        for label, results in rows.items()
    ]
    table = markdown_table(means, COLUMNS, first="training views")
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
