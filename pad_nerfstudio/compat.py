"""Compatibility fixes for running nerfstudio 1.1.5 on current PyTorch, applied on plugin import.

torch >= 2.6 loads checkpoints with ``weights_only=True``; nerfstudio checkpoints hold numpy scalars, so
``ns-eval``, ``ns-viewer`` and resuming would fail with "Unsupported global". Allow-listing the numpy
types that appear in them keeps the safe loader (no arbitrary pickles) and makes those commands work.
A run whose checkpoints are missing makes nerfstudio's loader fail with "list index out of range";
``explain_missing_checkpoints`` makes it say which folder is empty and what to do instead.
``fast_external_method_registry`` takes 4-10 s off the start of every ns-train, ns-eval and ns-viewer.
"""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

EVAL_UTILS = "nerfstudio.utils.eval_utils"


def allow_numpy_in_checkpoints() -> None:
    scalar = np.core.multiarray.scalar  # type: ignore[attr-defined]
    dtypes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtypes])


def require_checkpoint(load_dir: Path) -> None:
    """Exit with one line saying what to do when ``load_dir`` (a run's ``nerfstudio_models/``) holds no checkpoint.

    Example:
        >>> require_checkpoint(Path("outputs/cat/omnipose-ad/2024-01-01_000000/nerfstudio_models"))  # doctest: +SKIP
        SystemExit: error: no checkpoint (step-*.ckpt) in outputs/cat/.../nerfstudio_models: ...
    """
    folder = Path(load_dir)
    what = f"no checkpoint folder {folder}" if not folder.is_dir() else f"no checkpoint (step-*.ckpt) in {folder}"
    if not folder.is_dir() or not any(folder.glob("step-*.ckpt")):
        raise SystemExit(
            f"error: {what}: its training saved none (stopped before its first checkpoint) or they were deleted. "
            "Train it again, or point --load-config at the config.yml of a run that finished training."
        )


def explain_missing_checkpoints() -> None:
    """Make ``ns-eval``, ``ns-viewer``, ``ns-render`` and ``ns-export`` say that a run has no checkpoint.

    nerfstudio's ``eval_load_checkpoint`` loads the latest ``step-*.ckpt`` of the run and fails with a bare
    IndexError when there is none; it is wrapped to call :func:`require_checkpoint` first. Those scripts import
    eval_utils before anything else and eval_utils loads the plugins, so at plugin import it is usually half
    executed (its functions not defined yet): it is then wrapped on the first attribute read after it is complete.
    A script that imports eval_utils only after the plugin calls this function again afterwards.
    """
    module = sys.modules.get(EVAL_UTILS)
    if module is None:
        return
    if hasattr(module, "eval_setup"):  # defined last: the module is complete
        _wrap_eval_load_checkpoint(module)
    elif type(module) is types.ModuleType:
        module.__class__ = _WrapWhenComplete


class _WrapWhenComplete(types.ModuleType):
    """The class of a half-imported eval_utils until it is complete and wrapped."""

    def __getattribute__(self, name: str) -> Any:
        if "eval_setup" in object.__getattribute__(self, "__dict__"):
            self.__class__ = types.ModuleType
            _wrap_eval_load_checkpoint(self)
        return types.ModuleType.__getattribute__(self, name)  # not super(): the class may have just changed


def _wrap_eval_load_checkpoint(module: types.ModuleType) -> None:
    original = module.eval_load_checkpoint
    if hasattr(original, "__wrapped__"):
        return

    @functools.wraps(original)
    def eval_load_checkpoint(config: Any, pipeline: Any) -> Any:
        if config.load_step is None:  # nerfstudio picks the latest step-*.ckpt (an explicit step is checked there)
            require_checkpoint(config.load_dir)
        return original(config, pipeline)

    module.eval_load_checkpoint = eval_load_checkpoint


def fast_external_method_registry() -> None:
    """Register nerfstudio's list of installable external methods without inspecting the whole call stack.

    nerfstudio builds a placeholder config for each of its ~26 external methods while importing its method list;
    each placeholder asks ``inspect.stack()`` whether it is being built by that list, and ``inspect.stack`` reads
    the source of every frame and scans every loaded module for each one: 4-10 s on a 2-core CPU with torch
    loaded, paid by every ns-train, ns-eval and ns-viewer. The same question asked of the frame directly gives
    the same answer at no cost; a user who runs an external method still gets nerfstudio's install offer. The
    plugin is loaded before that list is built, so applying this at plugin import is enough.
    """
    from nerfstudio.configs import external_methods

    placeholder = external_methods.ExternalMethodDummyTrainerConfig
    original = placeholder.__post_init__
    if hasattr(original, "__wrapped__"):
        return

    @functools.wraps(original)
    def __post_init__(self: Any) -> None:
        # Frames: this method, the dataclass __init__, its caller (as nerfstudio's own check counts them).
        if sys._getframe(2).f_code.co_name == "get_external_methods":
            return
        original(self)

    placeholder.__post_init__ = __post_init__
