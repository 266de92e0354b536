"""Writes MAD-format classes of procedural brick animals: per class the training views with ``transforms.json``,
good and defective test views, binary ground-truth masks and (beyond MAD) ``test_poses.json``; plus
``attributes.json`` at the dataset root. Each class is rendered into a hidden temporary sibling folder and renamed
into place only when complete, so an interrupted run never leaves a half-written class. Every image depends
only on (seed, class, image, capture style), so results are byte-identical whatever the number of worker processes.

The capture (``--capture``) decides the cameras. ``ring`` is MAD-Sim's: 210 views on the 14 x 15 grid around the
object on white, posed in ``transforms.json``. ``handheld`` is MAD-Real-like: ``--views`` (default 50) irregular
views from above, around the object standing on a textured table with a wall behind
(:class:`~pad_nerfstudio.synth.backdrop.Backdrop`, per class :func:`class_backdrop`), and test views drawn alike.
There is no ``transforms.json``: finding the poses is part of the task. ``truth/transforms.json`` holds the true
training poses (copy it to ``transforms.json`` for a posed class) and ``truth/train_masks/{i}.png`` the exact object
masks of the training views (pixels at least half covered by the object); ``test_poses.json`` shares their frame.

The capture style (:class:`~pad_nerfstudio.synth.capture.CaptureStyle`, ``--style`` / ``--without``) decides how
real the images look. Its shading part (gloss, shadows) is applied to every render, including the defect-free
reference of :func:`render_clean_view` and the renders on which defect acceptance is judged; its per-image part
(exposure, white balance, blur, noise) only to the written images, each with its own random stream, so a test image
gets the same pose and defect in every style. Masks come from geometry and do not depend on the style.

Attributes per class (``attributes.json``; the PAD paper relates per-class results to shape and colour):

- ``shape_complexity``: 1 - (brick volume / volume of the bricks' convex hull); 0 for a single box, towards 1 for
  spindly shapes with limbs, necks and tails.
- ``silhouette_complexity``: mean over the training views of the isoperimetric ratio P^2 / (4 pi A) of the object's
  silhouette (1 for a disc; larger for ragged outlines).
- ``colour_contrast``: mean CIELAB colour difference (CIE76 delta E) over all pairs of face-adjacent bricks, equal
  colours counting as 0; 0 for a one-colour object, about 30-60 for saturated neighbours.
- ``luminance_std``: mean over the training views of the standard deviation of the luminance (Rec. 709, [0, 1]) of
  the object's pixels; it includes shading, so it is not zero even for one colour.
- ``num_bricks``, ``num_colours``, ``body_plan``, ``object_area_fraction`` (mean fraction of the image the object
  covers in training views) and ``seed`` (the global seed: ``build_brick_animal(name, seed)`` rebuilds the object).
- ``capture``: the capture style's settings (``CaptureStyle.as_dict()``); absent for the clean style, whose output
  is unchanged from before styles existed. A hand-held capture adds ``"kind": "handheld"`` and ``"views"`` to it.

``luminance_std`` is measured on the shaded renders before the per-image effects, so gloss and shadows count in it.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from pad_nerfstudio.synth.backdrop import Backdrop, object_centre, object_corners
from pad_nerfstudio.synth.cameras import (
    CAMERA_ANGLE_X,
    handheld_training_poses,
    random_handheld_pose,
    training_poses,
)
from pad_nerfstudio.synth.capture import CaptureStyle
from pad_nerfstudio.synth.defects import DEFECT_TYPES, sample_defect_view
from pad_nerfstudio.synth.difficulty import DIFFICULTIES
from pad_nerfstudio.synth.objects import PLATE_HEIGHT, ROUND_RADIUS, BrickObject, build_brick_animal, class_seed
from pad_nerfstudio.synth.raycast import background_for, compose, render, resolve, shade, to_uint8, trace

CLASS_NAMES = (
    "01Gorilla", "02Unicorn", "03Mallard", "04Turtle", "05Whale", "06Bird", "07Owl", "08Sabertooth", "09Swan",
    "10Sheep", "11Pig", "12Zalika", "13Pheonix", "14Elephant", "15Parrot", "16Cat", "17Scorpion", "18Obesobeso",
    "19Bear", "20Puppy",
)  # fmt: skip
"""The 20 MAD class folder names (spelling as in the data)."""

MIN_SIZE = 32
"""Below this, defects cannot be both small and above the minimum mask size."""
DEFAULT_SUPERSAMPLE = 3
CAPTURES = ("ring", "handheld")
"""Camera set-ups (``--capture``): MAD-Sim's posed ring grid on white, or MAD-Real-like hand-held views of the
object standing on a textured table, without training poses (they are in ``truth/`` for checking)."""
DEFAULT_VIEWS = 50
"""Training views of a hand-held capture (MAD-Real has about 50 per class)."""
ATTRIBUTES_FILE = "attributes.json"
TRUTH_DIR = "truth"
"""Folder of a hand-held class holding what structure-from-motion must recover: ``transforms.json`` (true training
poses) and ``train_masks/{i}.png`` (exact object masks of the training views)."""
_TASK_STREAMS = {"good": 1, **{kind: 2 + index for index, kind in enumerate(DEFECT_TYPES)}}
_CAPTURE_STREAM = 100
"""Seeds the per-image capture effects apart from the pose and defect draws (which must not change with style)."""
_HANDHELD_POSE_STREAM = 200
"""Seeds the hand-held training poses (all views of a class from one stream, drawn in order)."""
_BACKDROP_STREAM = 300
"""Seeds the backdrop's materials and textures."""
_CAPTURE_KINDS = {"train": 0, **_TASK_STREAMS}


class InvalidOptionError(ValueError):
    """A generator option the user gave is invalid (the message says which and what is allowed)."""


def resolve_class_names(classes: int | str | Sequence[str]) -> list[str]:
    """Class folder names from a count (first N of ``CLASS_NAMES``) or names ("gorilla", "01Gorilla", "cat,pig").

    Example:
        >>> resolve_class_names("gorilla,16cat")
        ['01Gorilla', '16Cat']
    """
    if isinstance(classes, str):
        text = classes.strip()
        classes = int(text) if text.isdigit() else [part for part in text.split(",") if part.strip()]
    if isinstance(classes, (int, np.integer)):
        if not 1 <= classes <= len(CLASS_NAMES):
            raise InvalidOptionError(f"--classes must be between 1 and {len(CLASS_NAMES)}, got {classes}")
        return list(CLASS_NAMES[: int(classes)])
    by_key = {}
    for name in CLASS_NAMES:
        by_key[name.lower()] = name
        by_key[name[2:].lower()] = name
    names = []
    for requested in classes:
        key = str(requested).strip().lower()
        if key not in by_key:
            raise InvalidOptionError(
                f"unknown class {requested!r}; expected one of {', '.join(CLASS_NAMES)} (case-insensitive, "
                "numeric prefix optional)"
            )
        if by_key[key] not in names:
            names.append(by_key[key])
    if not names:
        raise InvalidOptionError("no class names given")
    return names


def resolve_capture_style(style: str | CaptureStyle = "clean", without: str | Sequence[str] = ()) -> CaptureStyle:
    """A capture style from its name (``--style``) with some effects switched off (``--without``, comma-separated).

    Example:
        >>> resolve_capture_style("real", "shadows,white-balance").shadows
        False
    """
    if isinstance(style, str):
        try:
            style = CaptureStyle.named(style.strip().lower())
        except ValueError as error:
            raise InvalidOptionError(f"--style: {error}") from None
    if isinstance(without, str):
        without = without.split(",")
    names = [str(name).strip().lower().replace("_", "-") for name in without if str(name).strip()]
    try:
        return style.without(names)
    except ValueError as error:
        raise InvalidOptionError(f"--without: {error}") from None


def generate_dataset(
    out: Path | str,
    classes: int | str | Sequence[str] = 3,
    size: int = 200,
    seed: int = 0,
    n_test_good: int = 20,
    n_test_defect: int = 20,
    force: bool = False,
    workers: int | None = None,
    supersample: int = DEFAULT_SUPERSAMPLE,
    progress: bool = True,
    style: str | CaptureStyle = "clean",
    capture: str = "ring",
    views: int = DEFAULT_VIEWS,
    difficulty: str = "standard",
) -> list[Path]:
    """Generate MAD-Sim-format classes under ``out`` and return their folders.

    ``n_test_defect`` is per defect type. Existing non-empty class folders are refused unless ``force``.
    ``workers`` processes render in parallel (default: all CPUs, at most 8); the output does not depend on it.
    ``style`` is a capture style or its name ("clean", "real"; see :func:`resolve_capture_style`).
    ``capture`` is "ring" (210 posed views on white) or "handheld" (``views`` unposed views with a backdrop, true
    poses and masks in ``truth/``; ``views`` is ignored for "ring"). ``difficulty`` is "standard" or "hard"
    (:mod:`~pad_nerfstudio.synth.difficulty`: test-camera roll and look-at offset for "ring", defect sizes for both).

    Example:
        >>> generate_dataset("/tmp/mad_synth", classes=["gorilla"], size=64, n_test_good=2, n_test_defect=2)
        [PosixPath('/tmp/mad_synth/01Gorilla')]
    """
    names = resolve_class_names(classes)
    if size < MIN_SIZE:
        raise InvalidOptionError(f"--size must be at least {MIN_SIZE} px, got {size}")
    if n_test_good < 0 or n_test_defect < 0:
        raise InvalidOptionError("test image counts must not be negative")
    if supersample < 1:
        raise InvalidOptionError(f"supersample must be at least 1, got {supersample}")
    if capture not in CAPTURES:
        raise InvalidOptionError(f"--capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    if difficulty not in DIFFICULTIES:
        raise InvalidOptionError(f"--difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if capture == "handheld" and views < 1:
        raise InvalidOptionError(f"--views must be at least 1, got {views}")
    style = resolve_capture_style(style)
    out = Path(out)
    _check_out(out, force)
    for name in names:
        _check_target(out / name, force)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)

    start = time.perf_counter()
    folders, images = [], 0
    with _TaskRunner(workers) as runner, _progress(progress) as bar:
        for name in names:
            folder, count = _generate_class(
                out,
                name,
                size=size,
                seed=seed,
                n_test_good=n_test_good,
                n_test_defect=n_test_defect,
                force=force,
                supersample=supersample,
                style=style,
                runner=runner,
                bar=bar,
                capture=capture,
                views=views,
                difficulty=difficulty,
            )
            folders.append(folder)
            images += count
    if progress:
        from rich.console import Console

        Console().print(
            f"pad-synth: {len(folders)} classes, {images} images ({size} px) in {time.perf_counter() - start:.1f} s "
            f"-> {out}"
        )
    return folders


def _generate_class(
    out: Path,
    name: str,
    size: int,
    seed: int,
    n_test_good: int,
    n_test_defect: int,
    force: bool,
    supersample: int,
    style: CaptureStyle,
    runner: _TaskRunner,
    bar,
    capture: str = "ring",
    views: int = DEFAULT_VIEWS,
    difficulty: str = "standard",
) -> tuple[Path, int]:
    """Render one class into a temporary sibling folder, move it to ``out / name`` and update attributes.json.

    Returns the class folder and the number of images written.
    """
    target = out / name
    _check_target(target, force)
    handheld = capture == "handheld"
    tasks = [("train", index) for index in range(views if handheld else len(training_poses()))]
    tasks += [("good", index) for index in range(n_test_good)]
    tasks += [(kind, index) for kind in DEFECT_TYPES for index in range(n_test_defect)]
    temporary = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out))
    try:
        for sub in [
            "train/good",
            "test/good",
            *(f"test/{kind}" for kind in DEFECT_TYPES),
            *(f"ground_truth/{kind}" for kind in DEFECT_TYPES),
            *([f"{TRUTH_DIR}/train_masks"] if handheld else []),
        ]:
            (temporary / sub).mkdir(parents=True)
        job = _ClassJob(
            name, seed, size, supersample, CAMERA_ANGLE_X, str(temporary), style, capture, views, difficulty
        )
        task_id = bar.add_task(name, total=len(tasks)) if bar is not None else None
        train_stats, test_poses, frames = [], {}, []
        for (kind, index), result in zip(tasks, runner.map(job, tasks), strict=True):
            if kind == "train":
                frames.append({"file_path": f"train/good/{index}.png", "transform_matrix": result["pose"]})
                train_stats.append(result)
            else:
                test_poses[f"test/{kind}/{index}.png"] = result["pose"]
            if bar is not None:
                bar.advance(task_id)
        # A hand-held capture has no poses: structure-from-motion must find them; the true ones are for checking.
        transforms = temporary / TRUTH_DIR / "transforms.json" if handheld else temporary / "transforms.json"
        _write_json(transforms, {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames})
        _write_json(temporary / "test_poses.json", test_poses)
        attributes = _attributes(_object(name, seed), train_stats, size, seed)
        if not style.is_clean:
            attributes["capture"] = style.as_dict()
        if handheld:
            attributes["capture"] = {**attributes.get("capture", {}), "kind": "handheld", "views": views}
        if difficulty != "standard":
            attributes["difficulty"] = difficulty
        _move_into_place(temporary, target, force)
    except BaseException:
        runner.stop()
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _update_attributes(out, name, attributes)
    return target, len(tasks)


def render_clean_view(
    name: str,
    seed: int,
    c2w: np.ndarray,
    size: int,
    supersample: int = DEFAULT_SUPERSAMPLE,
    style: str | CaptureStyle = "clean",
    capture: str = "ring",
) -> np.ndarray:
    """The defect-free object of class ``name`` seen from ``c2w``, exactly as the generator renders it (uint8 RGB).

    ``name`` is resolved like ``--classes`` ("gorilla" or "01Gorilla"); ``seed`` is the global seed of the dataset
    (stored per class in attributes.json). The render has the shading (gloss, shadows) of ``style`` but none of its
    per-image effects: it is the exact reference, without exposure, white-balance, blur or noise draws. With
    ``capture="handheld"`` the object stands on its class's table (:func:`class_backdrop`), otherwise on white.

    Example:
        >>> poses = json.loads((class_dir / "test_poses.json").read_text())
        >>> reference = render_clean_view("01Gorilla", 0, np.array(poses["test/Burrs/0.png"]), 200)
    """
    (name,) = resolve_class_names([name])
    if capture not in CAPTURES:
        raise InvalidOptionError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    shading = resolve_capture_style(style).shading
    backdrop = _backdrop(name, seed) if capture == "handheld" else None
    c2w = np.asarray(c2w, dtype=np.float64)
    return to_uint8(render(_scene(name, seed), c2w, size, supersample, shading=shading, backdrop=backdrop))


def class_backdrop(name: str, seed: int) -> Backdrop:
    """The table and wall of class ``name`` in a hand-held capture of global ``seed`` (its ``ground_z`` is the table
    top, the object's lowest point).

    Example:
        >>> backdrop = class_backdrop("gorilla", 0)
        >>> image = render(scene, c2w, 200, backdrop=backdrop)
    """
    (name,) = resolve_class_names([name])
    return _backdrop(name, seed)


def handheld_poses(name: str, seed: int, views: int = DEFAULT_VIEWS) -> np.ndarray:
    """The true training poses (views, 4, 4) of class ``name`` in a hand-held capture (what ``truth/transforms.json``
    holds)."""
    (name,) = resolve_class_names([name])
    return _handheld_poses(name, seed, views).copy()


@dataclass(frozen=True)
class _ClassJob:
    """What a worker needs to render any image of a class (small and picklable; the object is rebuilt there)."""

    name: str
    seed: int
    size: int
    supersample: int
    camera_angle_x: float
    directory: str
    style: CaptureStyle = CaptureStyle()
    capture: str = "ring"
    views: int = DEFAULT_VIEWS
    difficulty: str = "standard"


@lru_cache(maxsize=4)
def _object(name: str, seed: int) -> BrickObject:
    return build_brick_animal(name, seed)


@lru_cache(maxsize=4)
def _scene(name: str, seed: int):
    return _object(name, seed).scene()


@lru_cache(maxsize=1)
def _training_poses() -> np.ndarray:
    return training_poses()


@lru_cache(maxsize=4)
def _framing(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre and bounding points of the object, for aiming hand-held cameras and keeping it in frame."""
    scene = _scene(name, seed)
    return object_centre(scene), object_corners(scene)


@lru_cache(maxsize=4)
def _handheld_poses(name: str, seed: int, views: int) -> np.ndarray:
    rng = np.random.default_rng([class_seed(seed, name), _HANDHELD_POSE_STREAM])
    return handheld_training_poses(rng, views, *_framing(name, seed))


@lru_cache(maxsize=4)
def _backdrop(name: str, seed: int) -> Backdrop:
    texture_seed = np.random.SeedSequence([class_seed(seed, name), _BACKDROP_STREAM]).generate_state(1)[0]
    return Backdrop.around(_scene(name, seed), int(texture_seed))


def _write_png(path: Path, pixels: np.ndarray, compress_level: int = 6) -> None:
    Image.fromarray(pixels).save(path, compress_level=compress_level)


def _render_task(job: _ClassJob, task: tuple[str, int]) -> dict:
    """Render and write one image (and its mask); returns its pose and, for training views, silhouette stats."""
    kind, index = task
    directory = Path(job.directory)
    obj = _object(job.name, job.seed)
    shading = job.style.shading
    capture_rng = np.random.default_rng([class_seed(job.seed, job.name), _CAPTURE_STREAM, _CAPTURE_KINDS[kind], index])

    # Sensor noise makes deflate about 5x slower at the default level, for files only ~12% smaller.
    compress_level = 1 if job.style.noise_sigma else 6

    def write_image(path: Path, image: np.ndarray) -> None:
        _write_png(path, to_uint8(job.style.apply_photometric(image, capture_rng)), compress_level)

    handheld = job.capture == "handheld"
    backdrop = _backdrop(job.name, job.seed) if handheld else None
    scene = _scene(job.name, job.seed)
    if kind == "train":
        c2w = _handheld_poses(job.name, job.seed, job.views)[index] if handheld else _training_poses()[index]
        shadows = shading.shadow_maps(scene)
        hits = trace(scene, c2w, job.size, job.supersample, job.camera_angle_x, shadows=shadows)
        background = background_for(hits, c2w, job.camera_angle_x, backdrop, scene, shadows)
        image = compose(hits, shade(hits, gloss=shading.gloss), background)
        write_image(directory / "train" / "good" / f"{index}.png", image)
        silhouette = resolve(hits.hit, job.size, job.supersample) >= 0.5
        if handheld:
            _write_png(directory / TRUTH_DIR / "train_masks" / f"{index}.png", silhouette.astype(np.uint8) * 255)
        return {"pose": c2w.tolist(), **_silhouette_stats(silhouette, image)}
    rng = np.random.default_rng([class_seed(job.seed, job.name), _TASK_STREAMS[kind], index])
    difficulty = DIFFICULTIES[job.difficulty]
    if handheld:
        centre, corners = _framing(job.name, job.seed)
        pose_sampler = partial(random_handheld_pose, centre=centre, points=corners)
    else:
        pose_sampler = difficulty.test_pose
    if kind == "good":
        c2w = pose_sampler(rng)
        image = render(scene, c2w, job.size, job.supersample, job.camera_angle_x, shading, backdrop)
        write_image(directory / "test" / "good" / f"{index}.png", image)
        return {"pose": c2w.tolist()}
    floor = backdrop.ground_z if handheld else None
    c2w, view = sample_defect_view(
        kind,
        obj,
        job.size,
        rng,
        job.supersample,
        job.camera_angle_x,
        shading,
        backdrop,
        floor,
        pose_sampler,
        difficulty,
    )
    write_image(directory / "test" / kind / f"{index}.png", view.image)
    _write_png(directory / "ground_truth" / kind / f"{index}_mask.png", view.mask.astype(np.uint8) * 255)
    return {"pose": c2w.tolist()}


def _render_task_star(args: tuple[_ClassJob, tuple[str, int]]) -> dict:
    return _render_task(*args)


def tune_allocator() -> None:
    """Keep freed memory in the process heap instead of returning it to the OS at once.

    Rendering allocates and frees many multi-megabyte numpy temporaries per image; with glibc's defaults each one
    is mmapped, zero-faulted page by page and unmapped again, which cost about a third of the run time (system
    time). A no-op where glibc's ``mallopt`` is unavailable. Called in worker processes and by the CLI; library
    callers rendering in-process may call it themselves.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc caps it at 32 MiB)
    except (OSError, AttributeError):
        pass


class _TaskRunner:
    """Runs image tasks in order, in-process for one worker or in a pool of spawned processes.

    Spawned (not forked) workers avoid inheriting the progress bar's thread; results come back in task order.
    """

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> _TaskRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def map(self, job: _ClassJob, tasks: Iterable[tuple[str, int]]) -> Iterator[dict]:
        if self.workers == 1:
            return (_render_task(job, task) for task in tasks)
        if self.executor is None:
            self.executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=tune_allocator
            )
        return self.executor.map(_render_task_star, [(job, task) for task in tasks], chunksize=2)

    def stop(self) -> None:
        """Cancel pending work and wait for running tasks, so nothing writes into a folder being removed."""
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, and an attributes.json in it that pad-synth did not write (unless forced)."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(
                f"--out {out}: {folder} is a file, not a folder; choose a folder (it is created if missing)"
            )
    attributes = out / ATTRIBUTES_FILE
    if attributes.exists() and not _written_by_pad_synth(attributes) and not force:
        raise FileExistsError(
            f"{attributes} exists and was not written by pad-synth; pass --force to replace it or choose another --out"
        )


def _written_by_pad_synth(path: Path) -> bool:
    """Whether ``path`` looks like pad-synth's attributes.json: class name -> its attributes (see `_attributes`)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and all(
        isinstance(value, dict) and {"shape_complexity", "seed"} <= value.keys() for value in data.values()
    )


def _check_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; remove it or choose another --out")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise FileExistsError(
            f"class folder {target} already exists and is not empty; pass --force to replace it or choose another --out"
        )


def _move_into_place(temporary: Path, target: Path, force: bool) -> None:
    """Rename the finished temporary folder to ``target``; a replaced folder is removed only after the rename."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():
        _check_target(target, force)
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, previous / target.name)
        try:
            os.replace(temporary, target)
        except BaseException:
            os.replace(previous / target.name, target)
            raise
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(temporary, target)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _update_attributes(out: Path, name: str, attributes: dict) -> None:
    """Merge one class's attributes into ``out/attributes.json`` (atomically, keeping other classes)."""
    path = out / ATTRIBUTES_FILE
    existing = {}
    if path.exists() and _written_by_pad_synth(path):  # another file there was refused by `_check_out` unless forced
        existing = json.loads(path.read_text())
    existing[name] = attributes
    handle, temporary = tempfile.mkstemp(prefix=".attributes.", suffix=".tmp", dir=out)
    with os.fdopen(handle, "w") as stream:
        stream.write(json.dumps(dict(sorted(existing.items())), indent=2) + "\n")
    os.replace(temporary, path)


def _silhouette_stats(silhouette: np.ndarray, image: np.ndarray) -> dict:
    area = float(silhouette.sum())
    padded = np.pad(silhouette, 1)
    # Counting pixel-edge crossings overestimates a diagonal outline by 4/pi on average; undo that.
    crossings = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    perimeter = crossings * math.pi / 4.0
    luminance = image @ np.array([0.2126, 0.7152, 0.0722])
    return {
        "area": area,
        "isoperimetric": perimeter**2 / (4.0 * math.pi * area) if area else 0.0,
        "luminance_std": float(luminance[silhouette].std()) if area else 0.0,
    }


def _attributes(obj: BrickObject, train_stats: list[dict], size: int, seed: int) -> dict:
    colours = {brick.colour for brick in obj.bricks}
    return {
        "shape_complexity": round(_hull_emptiness(obj), 4),
        "silhouette_complexity": round(float(np.mean([s["isoperimetric"] for s in train_stats])), 4),
        "colour_contrast": round(_adjacent_colour_difference(obj), 3),
        "luminance_std": round(float(np.mean([s["luminance_std"] for s in train_stats])), 4),
        "num_bricks": len(obj.bricks),
        "num_colours": len(colours),
        "body_plan": obj.body_plan,
        "object_area_fraction": round(float(np.mean([s["area"] for s in train_stats])) / size**2, 4),
        "seed": seed,
    }


def _hull_emptiness(obj: BrickObject) -> float:
    from scipy.spatial import ConvexHull

    corners, volume = [], 0.0
    for brick in obj.bricks:
        z0, z1 = brick.z * PLATE_HEIGHT, (brick.z + brick.size_z) * PLATE_HEIGHT
        for x in (brick.x, brick.x + brick.size_x):
            for y in (brick.y, brick.y + brick.size_y):
                corners.extend([(x, y, z0), (x, y, z1)])
        footprint = math.pi * ROUND_RADIUS**2 if brick.round else brick.size_x * brick.size_y
        volume += footprint * (z1 - z0)
    return float(max(0.0, 1.0 - volume / ConvexHull(np.asarray(corners, dtype=np.float64)).volume))


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65 white)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (
        linear
        @ np.array(
            [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
        ).T
    )
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _adjacent_colour_difference(obj: BrickObject) -> float:
    """Mean CIE76 delta E over pairs of bricks that share a face (on the stud grid)."""
    owner = {cell: index for index, brick in enumerate(obj.bricks) for cell in brick.cells()}
    pairs = set()
    for (i, j, k), index in owner.items():
        for neighbour in ((i + 1, j, k), (i, j + 1, k), (i, j, k + 1)):
            other = owner.get(neighbour)
            if other is not None and other != index:
                pairs.add((min(index, other), max(index, other)))
    if not pairs:
        return 0.0
    lab = _srgb_to_lab(np.array([brick.colour for brick in obj.bricks]))
    first, second = np.array(sorted(pairs)).T
    return float(np.linalg.norm(lab[first] - lab[second], axis=1).mean())
