"""One-line errors for the console scripts (`pad-synth`, `pad-bench`, `pad-demo`).

A bad input a user can cause (a missing folder, a class that is not MAD-format, an image size too small to place
a defect on) often surfaces deep inside numpy, PIL or torch, and its traceback says where the code broke rather than
what to change. :func:`user_errors` wraps a script's entry point: such an exception (OSError, ValueError,
RuntimeError and their subclasses, e.g. ``MADFormatError``) becomes ``pad-xxx: error: <message>`` on stderr and
exit code 1, and Ctrl-C one line and exit code 130. Other exceptions are bugs and keep their traceback;
``PAD_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

DEBUG_VARIABLE = "PAD_DEBUG"
"""Environment variable that, set to anything but "" or "0", lets every exception through with its traceback."""

USER_ERRORS = (OSError, ValueError, RuntimeError)
"""What bad input raises: unreadable or missing files, malformed data or options, impossible requests."""

PROGRAMMING_ERRORS = (NotImplementedError, RecursionError)
"""RuntimeErrors that are never the user's doing."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0")


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    Example:
        >>> one_line(FileNotFoundError(2, "No such file or directory", "data/cat"))
        'data/cat: No such file or directory'
        >>> one_line(ValueError("first line\\n  second line"))
        'first line second line'
    """
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        # "[Errno 2] No such file or directory: 'x'" -> "x: No such file or directory", like the shell says it.
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn the errors a user can cause in the block into one line on stderr and an exit code.

    Example:
        >>> def entrypoint() -> None:  # doctest: +SKIP
        ...     with user_errors("pad-synth"):
        ...         sys.exit(main())
    """
    if debug_enabled():
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as error:
        if isinstance(error, PROGRAMMING_ERRORS):
            raise
        sys.stdout.flush()  # so that the error line comes after what the script printed
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(1) from None
