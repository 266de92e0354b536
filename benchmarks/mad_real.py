"""MAD-Real conditions end to end: unposed hand-held photos on a backdrop -> `pad-poses` -> training -> ns-eval.

`pad-synth --capture handheld` writes each class as MAD-Real ships it (about 50 photos, no poses, a textured table
and wall behind the toy; the true poses and object masks aside under ``truth/``). Each class is then run twice:

- ``sfm``: `pad-poses` estimates the poses and the object masks, as a user without ground truth would run it;
- ``true``: the true poses and masks are given (truth/transforms.json and truth/train_masks), so the difference
  between the two rows is what structure from motion and automatic masking cost.

`pad-poses` is scored against the truth: registered photos, rotation and camera-centre error after the best
similarity (the reconstruction's frame is arbitrary), and the masks' IoU. For the ``sfm`` row the true query poses
are mapped into the reconstruction's frame by the same similarity, so query pose errors stay comparable.
Training is `omnipose-ad-lite`; evaluation is ns-eval's. Finished steps are skipped when run again.

    python benchmarks/mad_real.py --out /tmp/mad-real --classes gorilla,unicorn,mallard --size 160
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from runs import IMAGE_AUROC_COLUMNS, evaluate_run, markdown_table, numeric, train_lite

from pad_nerfstudio.synth.generate import resolve_class_names

VARIANTS = ("sfm", "true")
COLUMNS = {
    "registered": ("posed photos", "{:.0%}"),
    "sfm_rotation_deg_median": ("SfM rot. median °", "{:.3f}"),
    "sfm_centre_error_median": ("SfM centre err.", "{:.2%}"),
    "sfm_misplaced": ("posed > 2° off", "{:.1f}"),
    "mask_iou_mean": ("mask IoU", "{:.3f}"),
    **IMAGE_AUROC_COLUMNS,
    "pixel_auroc": ("pixel AUROC", "{:.3f}"),
    "pixel_aupro": ("AUPRO", "{:.3f}"),
    "pose_rot_err_deg_median": ("query pose median °", "{:.3f}"),
    "pose_rot_err_deg_p95": ("p95 °", "{:.2f}"),
    "sfm_seconds": ("pad-poses s", "{:.0f}"),
    "train_seconds": ("train s", "{:.0f}"),
    "seconds_per_query": ("s / query", "{:.1f}"),
}


def generate(out: Path, args) -> Path:
    """The hand-held classes (existing ones are kept, so a re-run resumes)."""
    from pad_nerfstudio.synth.cli import main as pad_synth

    root = out / "data" / f"handheld-{args.size}px-{args.views}views-{args.style}"
    missing = [name for name in resolve_class_names(args.classes) if not (root / name).is_dir()]
    if missing:
        argv = ["--out", str(root), "--classes", ",".join(missing), "--size", str(args.size), "--style", args.style]
        argv += ["--capture", "handheld", "--views", str(args.views)]
        argv += ["--n-test-good", str(args.n_test_good), "--n-test-defect", str(args.n_test_defect)]
        if pad_synth(argv) != 0:
            raise SystemExit(f"pad-synth failed for {root}")
    return root


def _copy_inputs(source: Path, target: Path) -> None:
    """What a MAD-Real user has: the photos, the test split and (for measuring only) test_poses.json."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("train", "test", "ground_truth"):
        shutil.copytree(source / name, target / name)
    shutil.copy(source / "test_poses.json", target / "test_poses.json")


def prepare_sfm(source: Path, target: Path) -> Dict[str, Any]:
    """Copy the photos, run pad-poses and score it against the truth; returns the pose/mask measurements."""
    from PIL import Image

    from pad_nerfstudio.data.object_masks import mask_iou
    from pad_nerfstudio.data.poses_cli import estimate_class_poses
    from pad_nerfstudio.data.sfm import align_similarity, pose_errors_after_alignment

    measured = target / "pad_poses_scores.json"
    if measured.exists():
        return json.loads(measured.read_text())
    _copy_inputs(source, target)
    summary = estimate_class_poses(target, progress=False)
    truth = {f["file_path"]: np.asarray(f["transform_matrix"]) for f in _frames(source / "truth" / "transforms.json")}
    frames = _frames(target / "transforms.json")
    estimated = np.stack([np.asarray(f["transform_matrix"]) for f in frames])
    true = np.stack([truth[f["file_path"]] for f in frames])
    errors = pose_errors_after_alignment(estimated, true)
    ious = []
    for frame in frames:
        predicted = np.asarray(Image.open(target / frame["mask_path"])) > 127
        stem = Path(frame["file_path"]).stem
        ious.append(mask_iou(predicted, np.asarray(Image.open(source / "truth" / "train_masks" / f"{stem}.png")) > 127))

    # Query poses are measured in the reconstruction's frame: map the true ones there.
    scale, rotation, translation = align_similarity(estimated[errors["inlier"], :3, 3], true[errors["inlier"], :3, 3])
    test_poses = json.loads((source / "test_poses.json").read_text())
    for name, pose in test_poses.items():
        pose = np.asarray(pose)
        moved = np.eye(4)
        moved[:3, :3] = rotation.T @ pose[:3, :3]
        moved[:3, 3] = rotation.T @ (pose[:3, 3] - translation) / scale
        test_poses[name] = moved.tolist()
    (target / "test_poses.json").write_text(json.dumps(test_poses))

    scores = {
        "registered": summary["registered"] / summary["photos"],
        "sfm_rotation_deg_median": float(np.median(errors["rotation_deg"])),
        "sfm_rotation_deg_max": float(np.max(errors["rotation_deg"])),
        "sfm_misplaced": int((errors["rotation_deg"] > 2.0).sum()),
        "sfm_left_out": len(summary["misplaced"]),
        "sfm_centre_error_median": float(np.median(errors["centre_fraction"])),
        "sfm_reprojection_px": summary["mean_reprojection_error_px"],
        "mask_iou_mean": float(np.mean(ious)),
        "mask_iou_min": float(np.min(ious)),
        "sfm_seconds": summary["seconds"]["total"],
    }
    measured.write_text(json.dumps(scores, indent=2))
    return scores


def prepare_true(source: Path, target: Path) -> Dict[str, Any]:
    """Copy the photos and give them the true poses and masks."""
    if (target / "transforms.json").exists():
        return {}
    _copy_inputs(source, target)
    shutil.copytree(source / "truth" / "train_masks", target / "train" / "masks")
    meta = json.loads((source / "truth" / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame["mask_path"] = f"train/masks/{Path(frame['file_path']).stem}.png"
    (target / "transforms.json").write_text(json.dumps(meta, indent=2))
    return {}


def _frames(path: Path) -> List[dict]:
    return json.loads(path.read_text())["frames"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="data, runs and results go here")
    parser.add_argument("--classes", default="gorilla,unicorn,mallard", help="pad-synth class names or a count")
    parser.add_argument("--size", type=int, default=160, help="image size in px")
    parser.add_argument("--views", type=int, default=50, help="hand-held training photos per class")
    parser.add_argument("--style", default="clean", choices=("clean", "real"), help="pad-synth capture style")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--n-test-good", type=int, default=12)
    parser.add_argument("--n-test-defect", type=int, default=12, help="per defect type")
    parser.add_argument("--max-num-iterations", type=int, default=None, help="training steps (default: the preset's)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(set(variants) - set(VARIANTS))}; choose from {', '.join(VARIANTS)}")

    root = generate(args.out, args)
    per_class, grouped = [], {}
    for name in resolve_class_names(args.classes):
        for variant in variants:
            key = f"{variant}/{name}"
            run_dir = args.out / "runs" / f"{args.size}px-{args.views}views-{args.style}" / variant / name
            result_path = run_dir / "result.json"
            print(f"== {key}", flush=True)
            if result_path.exists():
                result = json.loads(result_path.read_text())
            else:
                class_dir = run_dir / "class" / name
                prepare = prepare_sfm if variant == "sfm" else prepare_true
                result = prepare(root / name, class_dir)
                config_path, train_seconds = train_lite(class_dir, run_dir, max_num_iterations=args.max_num_iterations)
                metrics = evaluate_run(config_path, run_dir / "report")
                result.update(numeric(metrics), train_seconds=train_seconds)
                result_path.write_text(json.dumps(result, indent=2))
            per_class.append((key, result))
            grouped.setdefault(variant, []).append(result)
    means = [
        (variant, {k: float(np.nanmean([r.get(k, np.nan) for r in results])) for k in COLUMNS})
        for variant, results in grouped.items()
    ]
    summary = markdown_table(means, COLUMNS)
    results = args.out / f"results-{args.size}px-{args.views}views-{args.style}.md"
    results.write_text(f"## Mean over classes\n\n{summary}\n\n## Per class\n\n{markdown_table(per_class, COLUMNS)}\n")
    print(summary)
    print(f"\nPer-class rows: {results}")


if __name__ == "__main__":
    main()
