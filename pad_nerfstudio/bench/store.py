"""Benchmark results on disk: atomic JSON writes and reading the stored runs back.

A run's ``result.json`` is the proof that the run finished: the runner skips runs that have one, and the
report is built from these files alone, so shards computed on different machines merge by copying their
``runs/`` folders together. It must therefore never exist half-written: every file here is written to a
temporary file in the same folder and renamed over the target (``os.replace`` is atomic on POSIX and
Windows), and the temporary file is removed if anything fails before the rename.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from pad_nerfstudio.bench.plan import RUNS_FOLDER, BenchRun

__all__ = [
    "RESULT_FILE",
    "write_json_atomic",
    "write_text_atomic",
    "read_json",
    "read_result",
    "load_results",
    "json_ready",
]

RESULT_FILE = "result.json"
RESULT_VERSION = 1


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into Python numbers/lists and NaN/inf into None (strict JSON).

    Example:
        >>> json_ready({"a": float("nan"), "b": [1.0, float("inf")]})
        {'a': None, 'b': [1.0, None]}
    """
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars, tensors
        return json_ready(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` so that readers see either the old file or the complete new one.

    Example:
        >>> write_json_atomic(Path("/tmp/result.json"), {"image_auroc": 0.9})
    """
    # allow_nan=False: NaN is not JSON; json_ready already mapped it to null, anything left is a bug worth raising.
    _write_atomic(path, lambda stream: json.dump(data, stream, indent=2, allow_nan=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see `write_json_atomic`)."""
    _write_atomic(path, lambda stream: stream.write(text))


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """The JSON object stored at ``path``, or None when the file is missing, unreadable or not an object."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_result(path: Path, run: Optional[BenchRun] = None) -> Optional[Dict[str, Any]]:
    """The stored result at ``path``, or None when there is none (or it is not a finished result of ``run``)."""
    result = read_json(path)
    if result is None or not isinstance(result.get("metrics"), dict):
        return None
    if run is not None and (result.get("class_name"), result.get("method"), result.get("setting")) != (
        run.class_name,
        run.method,
        run.setting,
    ):
        return None
    return result


def load_results(out: Path) -> List[Dict[str, Any]]:
    """Every finished run stored under ``out/runs``, sorted like the plan."""
    results = []
    for path in sorted((Path(out) / RUNS_FOLDER).glob(f"*/*/*/{RESULT_FILE}")):
        result = read_result(path)
        if result is not None:
            result["_path"] = str(path)
            results.append(result)

    def order(result: Dict[str, Any]):
        views = result.get("train_views")
        return BenchRun(result["class_name"], result["method"], views).sort_key()

    return sorted(results, key=order)
