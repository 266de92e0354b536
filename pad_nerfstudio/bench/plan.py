"""What a benchmark consists of: the (class, method, setting) runs, where each one lives, and how shards split them.

A run is the unit of work and of resumption: one method trained and evaluated on one class with one number of
training views. The plan is the sorted cross product of the requested classes, methods and settings, so every
process given the same options (e.g. every task of a cluster job array) computes the same plan, and
``shard_runs(plan, i, n)`` hands out every run to exactly one of the n shards. Nothing here touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from pad_nerfstudio.data.mad_layout import MADFormatError, resolve_class_dir

__all__ = [
    "METHODS",
    "BenchRun",
    "BenchOptionError",
    "plan_runs",
    "shard_runs",
    "parse_shard",
    "parse_methods",
    "parse_train_views",
    "resolve_classes",
    "setting_name",
    "run_dir",
]

METHODS: Tuple[str, ...] = ("omnipose-ad", "patchcore", "nearest-view")
"""Methods the benchmark knows, in the column order of the report."""

RUNS_FOLDER = "runs"
"""Sub-folder of the benchmark output holding one folder per run."""


class BenchOptionError(ValueError):
    """A benchmark option the user gave is invalid; the message says which and what is allowed."""


class ReportError(ValueError):
    """The report cannot be built (e.g. no finished runs); the message says where it looked.

    Declared here rather than in `report` so that the command line can catch it without importing the methods.
    """


def setting_name(train_views: Optional[int]) -> str:
    """Folder and table name of a training-view setting.

    Example:
        >>> setting_name(None), setting_name(50)
        ('all-views', '50-views')
    """
    return "all-views" if train_views is None else f"{train_views}-views"


@dataclass(frozen=True)
class BenchRun:
    """One (class, method, setting) of the benchmark."""

    class_name: str
    """Class folder name, e.g. "01Gorilla"."""
    method: str
    """One of METHODS."""
    train_views: Optional[int] = None
    """Evenly spread training views kept (the paper's dense-to-sparse study); None = all."""

    @property
    def setting(self) -> str:
        return setting_name(self.train_views)

    @property
    def key(self) -> str:
        """Unique, human-readable name: "<class>/<method>/<setting>" (also its folder under runs/)."""
        return f"{self.class_name}/{self.method}/{self.setting}"

    def sort_key(self) -> Tuple[str, str, int]:
        # All views first, then settings from dense to sparse, as in the paper's Table 3.
        return (self.class_name, self.method, -1 if self.train_views is None else -self.train_views)


def run_dir(out: Path, run: BenchRun) -> Path:
    """Folder of one run: ``out/runs/<class>/<method>/<setting>``."""
    return Path(out) / RUNS_FOLDER / run.class_name / run.method / run.setting


def _split_list(text: str, option: str) -> List[str]:
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        raise BenchOptionError(f"{option} is empty; give a comma-separated list.")
    return items


def parse_methods(text: str) -> List[str]:
    """Methods from "omnipose-ad,patchcore" or "all", in the order given, without repeats.

    Example:
        >>> parse_methods("patchcore, nearest-view")
        ['patchcore', 'nearest-view']
    """
    if text.strip().lower() == "all":
        return list(METHODS)
    methods: List[str] = []
    for name in _split_list(text, "--methods"):
        key = name.lower().replace("_", "-")
        if key not in METHODS:
            raise BenchOptionError(f"Unknown method {name!r} in --methods; choose from {', '.join(METHODS)} or 'all'.")
        if key not in methods:
            methods.append(key)
    return methods


def parse_train_views(text: str) -> List[Optional[int]]:
    """Training-view settings from "all" or "210,100,50" (None = all views).

    Example:
        >>> parse_train_views("all,100,50")
        [None, 100, 50]
    """
    settings: List[Optional[int]] = []
    for part in _split_list(text, "--train-views"):
        if part.lower() == "all":
            value: Optional[int] = None
        else:
            try:
                value = int(part)
            except ValueError:
                raise BenchOptionError(
                    f"--train-views entry {part!r} is not a number; give e.g. 'all' or '210,100,50'."
                ) from None
            if value < 1:
                raise BenchOptionError(f"--train-views entries must be at least 1, got {value}.")
        if value not in settings:
            settings.append(value)
    return settings


def parse_shard(text: str) -> Tuple[int, int]:
    """(index, count) from "i/n" with 0 <= i < n (a Slurm array 0..n-1 passes "$SLURM_ARRAY_TASK_ID/n").

    Example:
        >>> parse_shard("2/8")
        (2, 8)
    """
    try:
        index_text, count_text = str(text).split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise BenchOptionError(f"--shard must look like i/n (e.g. 0/4), got {text!r}.") from None
    if count < 1 or not 0 <= index < count:
        raise BenchOptionError(f"--shard {text}: need n >= 1 and 0 <= i < n (shards are numbered from 0).")
    return index, count


def _class_folders(root: Path) -> List[Path]:
    folders = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            folders.append(resolve_class_dir(child))
        except MADFormatError:
            continue  # not a class folder (e.g. outputs/ next to the data)
    return folders


def resolve_classes(data: Path, classes: str = "all") -> List[Path]:
    """Class folders of the benchmark, sorted by name.

    Args:
        data: a dataset root holding class folders (MAD, pad-synth), or one class folder.
        classes: "all", or comma-separated loosely written names ("gorilla,cat", "01Gorilla").
    """
    data = Path(data)
    if not data.is_dir():
        raise BenchOptionError(f"--data {data} is not a folder; give the dataset root (e.g. data/pad-synth).")
    try:
        single = resolve_class_dir(data) if (data / "transforms.json").is_file() else None
    except MADFormatError:
        single = None
    if classes.strip().lower() == "all":
        folders = [single] if single is not None else _class_folders(data)
        if not folders:
            raise BenchOptionError(
                f"No MAD class folders in {data}: expected e.g. {data}/01Gorilla/transforms.json. "
                "Generate data with `pad-synth --out DIR` or unpack MAD there."
            )
        return folders
    root = data.parent if single is not None else data
    folders = []
    for name in _split_list(classes, "--classes"):
        try:
            folder = resolve_class_dir(root / name)
        except MADFormatError as error:
            raise BenchOptionError(f"--classes {name}: {error}") from None
        if folder not in folders:
            folders.append(folder)
    return sorted(folders, key=lambda p: p.name)


def plan_runs(
    class_names: Sequence[str], methods: Sequence[str], train_views: Sequence[Optional[int]] = (None,)
) -> List[BenchRun]:
    """Every (class, method, setting), in a canonical order that does not depend on the order of the inputs.

    Example:
        >>> [r.key for r in plan_runs(["02Unicorn", "01Gorilla"], ["patchcore"], [None])]
        ['01Gorilla/patchcore/all-views', '02Unicorn/patchcore/all-views']
    """
    runs = {BenchRun(c, m, v) for c in class_names for m in methods for v in train_views}
    return sorted(runs, key=BenchRun.sort_key)


def shard_runs(runs: Sequence[BenchRun], index: int, count: int) -> List[BenchRun]:
    """The runs of shard ``index`` of ``count``: every ``count``-th run of the canonical order.

    Round robin rather than contiguous blocks, so that each shard gets a mix of classes and of cheap and
    expensive methods. Every run belongs to exactly one shard.

    Example:
        >>> runs = plan_runs(["a", "b", "c"], ["patchcore"])
        >>> [r.class_name for r in shard_runs(runs, 0, 2)], [r.class_name for r in shard_runs(runs, 1, 2)]
        (['a', 'c'], ['b'])
    """
    if count < 1 or not 0 <= index < count:
        raise BenchOptionError(f"Shard {index}/{count}: need count >= 1 and 0 <= index < count.")
    ordered = sorted(runs, key=BenchRun.sort_key)
    return ordered[index::count]
