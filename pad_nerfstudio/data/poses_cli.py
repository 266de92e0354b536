"""``pad-poses CLASS_DIR``: poses (and object masks) for a class of unposed photos, e.g. MAD-Real.

Runs structure from motion on ``train/good/*`` (:mod:`pad_nerfstudio.data.sfm`), separates the object from the
backdrop (:mod:`pad_nerfstudio.data.object_masks`, unless the photos come with masks or ``--masks none``) and writes
``transforms.json`` (nerfstudio keys, one ``mask_path`` per frame) plus ``train/masks/``. After it, the class trains
like a MAD-Sim class: ``ns-train omnipose-ad --data CLASS_DIR``. Nothing is written unless everything succeeded.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRANSFORMS = "transforms.json"
SPARSE_POINTS = "sparse_pc.ply"
MASK_FOLDER = "train/masks"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pad-poses",
        description="Estimate camera poses of a class's unposed training photos (structure from motion with "
        "pycolmap) and the object's masks, and write the class's transforms.json.",
    )
    parser.add_argument(
        "class_dir",
        type=Path,
        help="class folder with train/good/<photos> (and test/ for queries); mad-real/gorilla finds mad-real/01Gorilla",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing transforms.json and masks")
    parser.add_argument(
        "--masks",
        choices=("auto", "none"),
        default="auto",
        help="auto: separate the object from the backdrop (GrabCut + multi-view hull); none: the photos already "
        "show the object on white or with transparency",
    )
    parser.add_argument(
        "--camera-angle-x",
        type=float,
        default=None,
        help="horizontal field of view in radians when known (fixes the focal length); estimated otherwise",
    )
    parser.add_argument("--camera-model", default="SIMPLE_PINHOLE", choices=("SIMPLE_PINHOLE", "PINHOLE"))
    parser.add_argument(
        "--min-registered",
        type=float,
        default=0.8,
        help="refuse when fewer than this fraction of the photos get a pose (default 0.8)",
    )
    return parser


def estimate_class_poses(
    class_dir: Path,
    force: bool = False,
    masks: str = "auto",
    camera_angle_x: float | None = None,
    camera_model: str = "SIMPLE_PINHOLE",
    min_registered: float = 0.8,
    progress: bool = True,
) -> dict:
    """Pose (and mask) one class folder in place; returns the summary stored in transforms.json (plus its path).

    Raises :class:`~pad_nerfstudio.data.sfm.SfMError` (too few photos posed), ``FileExistsError`` (already posed,
    without ``force``) or :class:`~pad_nerfstudio.data.mad_layout.MADFormatError` (no photos).
    """
    from pad_nerfstudio.data.mad_layout import MADFormatError, natural_key, resolve_class_dir
    from pad_nerfstudio.data.sfm import reconstruct, write_ply

    class_dir = resolve_class_dir(Path(class_dir))  # also "mad-real/gorilla" for mad-real/01Gorilla
    photo_dir = class_dir / "train" / "good"
    photos = sorted((p for p in photo_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if len(photos) < 3:
        raise MADFormatError(
            f"{photo_dir} holds {len(photos)} photos: pad-poses needs the class's training photos there."
        )
    transforms = class_dir / TRANSFORMS
    if transforms.exists() and not force:
        raise FileExistsError(f"{transforms} exists: the class is already posed. Use --force to estimate it again.")
    names = [p.relative_to(class_dir).as_posix() for p in photos]

    started = time.perf_counter()
    with _Progress(progress) as bar:
        focal = None
        if camera_angle_x is not None:
            from PIL import Image

            with Image.open(photos[0]) as first:
                focal = 0.5 * first.size[0] / math.tan(0.5 * camera_angle_x)
        result = reconstruct(class_dir, names, camera_model=camera_model, focal_length=focal, on_stage=bar.update)
        _check_registered(result.names, result.unregistered, len(names), min_registered)
        with tempfile.TemporaryDirectory(prefix=".pad-poses-", dir=class_dir) as staging:
            staging = Path(staging)
            misplaced: list[str] = []
            if masks == "auto":
                misplaced = _write_masks(class_dir, result, staging / "masks", bar.update)
            kept = [(name, pose) for name, pose in zip(result.names, result.camera_to_worlds) if name not in misplaced]
            _check_registered([name for name, _ in kept], result.unregistered + misplaced, len(names), min_registered)
            summary = {
                "registered": len(kept),
                "photos": len(names),
                "unregistered": result.unregistered,
                "misplaced": misplaced,
                "mean_reprojection_error_px": round(result.mean_reprojection_error, 4),
                "ground_height": None if result.ground_height is None else round(result.ground_height, 6),
                "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
            }
            summary["seconds"]["total"] = round(time.perf_counter() - started, 2)
            frames = []
            for name, pose in kept:
                frame = {"file_path": name, "transform_matrix": pose.tolist()}
                if masks == "auto":
                    frame["mask_path"] = f"{MASK_FOLDER}/{Path(name).stem}.png"
                frames.append(frame)
            write_ply(staging / SPARSE_POINTS, result.points)
            content = {**result.intrinsics, "ply_file_path": SPARSE_POINTS, "frames": frames, "pad_poses": summary}
            (staging / TRANSFORMS).write_text(json.dumps(content, indent=2))
            # Everything is complete: move it into place (masks first, so transforms.json never names missing ones).
            if masks == "auto":
                target = class_dir / MASK_FOLDER
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(staging / "masks"), target)
            (staging / SPARSE_POINTS).replace(class_dir / SPARSE_POINTS)
            (staging / TRANSFORMS).replace(transforms)
    return {**summary, "transforms": str(transforms)}


def _check_registered(posed: list[str], not_posed: list[str], photos: int, min_registered: float) -> None:
    """Refuse, naming the photos, when too few of them have a usable pose."""
    from pad_nerfstudio.data.sfm import SfMError

    if len(posed) >= min_registered * photos:
        return
    listed = ", ".join(not_posed[:10]) + (" ..." if len(not_posed) > 10 else "")
    raise SfMError(
        f"Only {len(posed)} of {photos} photos got a pose ({len(posed) / photos:.0%} < {min_registered:.0%}); "
        f"not posed: {listed}. Retake them with more overlap with their neighbours (10-15 degrees apart), sharp, "
        "with the backdrop's texture in view, or remove them and run pad-poses again (or lower --min-registered)."
    )


def _write_masks(class_dir: Path, result, out: Path, report) -> list[str]:
    """Write the object masks of the posed photos into ``out``; returns the photos left out because their pose
    disagrees with the others' (structure from motion placed them wrongly; they would teach the field a wrong
    view)."""
    from PIL import Image

    from pad_nerfstudio.data.mad_dataset import load_rgb
    from pad_nerfstudio.data.mad_layout import Intrinsics, object_sphere
    from pad_nerfstudio.data.object_masks import automatic_masks

    images = [load_rgb(class_dir / name) for name in result.names]
    k = result.intrinsics
    camera = np.array([k["fl_x"], k["fl_y"], k["cx"], k["cy"]])
    cameras = [Intrinsics(k["fl_x"], k["fl_y"], k["cx"], k["cy"], k["w"], k["h"])] * len(images)
    # The sphere every camera sees is centred where they look, which normalisation made the origin.
    _, radius = object_sphere(result.camera_to_worlds, cameras)
    found = automatic_masks(
        images,
        result.camera_to_worlds,
        np.repeat(camera[None], len(images), axis=0),
        radius,
        result.ground_height,
        result.points,
        on_progress=lambda done, total: report("masks", done, total),
    )
    misplaced = [result.names[index] for index in found.misplaced()]
    out.mkdir(parents=True)
    for name, mask in zip(result.names, found.masks):
        if name not in misplaced:
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{Path(name).stem}.png")
    return misplaced


class _Progress:
    """One rich progress bar per stage (features, matching, mapping, masks), or nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)

    def update(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pad_nerfstudio.data.mad_layout import MADFormatError
    from pad_nerfstudio.data.sfm import SfMError

    try:
        summary = estimate_class_poses(
            args.class_dir,
            force=args.force,
            masks=args.masks,
            camera_angle_x=args.camera_angle_x,
            camera_model=args.camera_model,
            min_registered=args.min_registered,
        )
    except (SfMError, FileExistsError, MADFormatError) as error:
        print(f"pad-poses: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pad-poses: interrupted; nothing was written", file=sys.stderr)
        return 130
    if summary["misplaced"]:
        print(
            f"pad-poses: left out {len(summary['misplaced'])} photos whose pose disagrees with the others' view of "
            f"the object: {', '.join(summary['misplaced'])}"
        )
    print(
        f"pad-poses: {summary['registered']}/{summary['photos']} photos posed, mean reprojection error "
        f"{summary['mean_reprojection_error_px']:.2f} px, {summary['seconds']['total']:.0f} s -> "
        f"{summary['transforms']}"
    )
    return 0


def entrypoint() -> None:
    """Console-script entry point (``pad-poses``); ``PAD_DEBUG=1`` shows tracebacks instead of one-line errors."""
    from pad_nerfstudio.cli_errors import user_errors

    with user_errors("pad-poses"):
        sys.exit(main())


if __name__ == "__main__":
    entrypoint()
