"""What each part of the anomaly comparison buys: scorer variants on the same references, side by side.

The references are rendered once per query from a trained `omnipose-ad` run at the poses its `ns-eval` report
estimated (``--poses report/poses.json``; estimated afresh when omitted) and, when the class has
``test_poses.json``, also at the true poses (the ceiling that perfect localisation would give). Every scorer
variant then compares the same query/reference pairs, so the differences are the scorer's alone:

- ``pad-protocol``: the released code's comparison (no registration, no shift tolerance);
- ``+registration``: the reference is first translated (sub-pixel) onto the query;
- ``+shift-window``: each query location is compared with the best reference location within 2 px;
- ``default``: both (the pipeline's setting); ``default, avgpool-max``: the paper's image-score rule.

Residual misalignment mostly hurts good images (every edge lights up), so besides AUROC/AUPRO the table
shows the false-positive rate on good images at 95% recall of defective ones.

    python benchmarks/scoring_ablation.py --load-config outputs/01Gorilla/omnipose-ad/RUN/config.yml \\
        --poses outputs/.../inspection/poses.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from nerfstudio.utils.eval_utils import eval_setup
from rich.console import Console
from rich.progress import track
from rich.table import Table

from pad_nerfstudio.anomaly.anomaly_map import AnomalyScorerConfig
from pad_nerfstudio.anomaly.metrics import compute_anomaly_metrics
from pad_nerfstudio.data.mad_layout import read_true_poses

CONSOLE = Console()


def variants(base: AnomalyScorerConfig) -> dict[str, AnomalyScorerConfig]:
    return {
        "pad-protocol": dataclasses.replace(base, align_radius=0, shift_radius=0.0),
        "+registration": dataclasses.replace(base, shift_radius=0.0),
        "+shift-window": dataclasses.replace(base, align_radius=0),
        "default": base,
        "default, avgpool-max": dataclasses.replace(base, score_rule="avgpool-max"),
    }


def fpr_at_recall(labels: np.ndarray, scores: np.ndarray, recall: float = 0.95) -> float:
    """Fraction of good images scoring above the threshold that still catches `recall` of the defective ones."""
    threshold = np.quantile(scores[labels == 1], 1.0 - recall)
    return float(np.mean(scores[labels == 0] >= threshold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a trained run")
    parser.add_argument("--poses", type=Path, help="poses.json of an ns-eval report (estimated when omitted)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    _, pipeline, _, _ = eval_setup(args.load_config, test_mode="test")
    queries = pipeline.test_queries()
    class_dir = Path(queries.metadata["class_dir"])
    estimated = json.loads(args.poses.read_text()) if args.poses else {}
    true_poses = read_true_poses(class_dir)  # empty for real MAD data: only the estimated-pose column then
    estimator, default_scorer = pipeline.detector()

    pairs = {"estimated pose": [], "true pose": []}
    items = []
    for index in track(range(len(queries)), description="Rendering references"):
        item = queries[index]
        name = Path(queries.image_filenames[index]).relative_to(class_dir).as_posix()
        query = item["image"][..., :3]
        height, width = query.shape[:2]
        intrinsics = estimator.query_intrinsics(width, height).float()
        pose = torch.tensor(estimated[name])[:3] if name in estimated else estimator.estimate_pose(query)[0]
        poses = {"estimated pose": pose}
        if name in true_poses:
            poses["true pose"] = torch.from_numpy(true_poses[name])[:3]
        for key, value in poses.items():
            render = pipeline.model.render_image(value.float(), intrinsics, width, height)["rgb"].clamp(0, 1).cpu()
            pairs[key].append((query.permute(2, 0, 1), render.permute(2, 0, 1)))
        items.append((int(item["label"]), str(item["defect_type"]), item["gt_mask"].numpy()))

    labels = np.array([label for label, _, _ in items])
    table = Table(title=f"{class_dir.name}: anomaly scorer variants ({len(items)} queries)")
    for column in ("reference", "scorer", "image AUROC", "pixel AUROC", "AUPRO", "good FPR @95% recall"):
        table.add_column(column, justify="right")
    figures = []
    backbone = default_scorer.backbone  # shared by every variant
    for reference_kind, reference_pairs in pairs.items():
        if len(reference_pairs) != len(items):
            continue
        for name, config in variants(pipeline.config.scorer).items():
            scorer = config.setup(backbone=backbone)
            maps, scores = [], []
            for query, reference in reference_pairs:
                anomaly_map, score = scorer(query[None], reference[None])
                maps.append(anomaly_map[0].numpy())
                scores.append(float(score[0]))
            metrics = compute_anomaly_metrics(
                labels, [t for _, t, _ in items], scores, [m for _, _, m in items], maps, size=config.map_size
            )
            row = {
                "reference": reference_kind,
                "scorer": name,
                **{k: metrics[k] for k in ("image_auroc", "pixel_auroc", "pixel_aupro")},
                "good_fpr_at_95_recall": fpr_at_recall(labels, np.array(scores)),
            }
            figures.append(row)
            table.add_row(
                reference_kind,
                name,
                f"{row['image_auroc']:.3f}",
                f"{row['pixel_auroc']:.4f}",
                f"{row['pixel_aupro']:.3f}",
                f"{row['good_fpr_at_95_recall']:.2f}",
            )
    CONSOLE.print(table)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
