"""Command line of the procedural MAD-format dataset generator (``pad-synth``): parses the options, calls
:func:`pad_nerfstudio.synth.generate.generate_dataset` and turns the errors a user can cause (existing folders,
unknown class names or capture effects, bad sizes) into one-line messages instead of tracebacks. ``--style real``
renders like a camera would capture the toy (gloss, shadows, exposure, white balance, blur, noise); ``--without``
switches single effects off for ablations. ``--capture handheld`` takes ``--views`` unposed MAD-Real-like views of
the toy standing on a textured table instead of the posed ring grid on white.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from pad_nerfstudio.cli_errors import user_errors
from pad_nerfstudio.synth.capture import EFFECTS, STYLES
from pad_nerfstudio.synth.generate import (
    CAPTURES,
    CLASS_NAMES,
    DEFAULT_SUPERSAMPLE,
    DEFAULT_VIEWS,
    MIN_SIZE,
    InvalidOptionError,
    generate_dataset,
    resolve_capture_style,
    tune_allocator,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pad-synth",
        description="Generate a MAD-format dataset of procedural LEGO-like brick animals (training views, good and "
        "defective test views, ground-truth masks): posed MAD-Sim-like renders on white by default, unposed "
        "MAD-Real-like hand-held views with --capture handheld.",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset root; one folder per class is created in it")
    parser.add_argument(
        "--classes",
        default="3",
        help="a count N (the first N of the 20 MAD classes) or comma-separated names, case-insensitive, numeric "
        f"prefix optional (e.g. gorilla,16cat). Known: {' '.join(CLASS_NAMES)}",
    )
    parser.add_argument("--size", type=int, default=200, help=f"image width = height in px (>= {MIN_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="global seed; each class derives its own from it")
    parser.add_argument("--n-test-good", type=int, default=20, help="defect-free test images per class")
    parser.add_argument("--n-test-defect", type=int, default=20, help="test images per class and defect type")
    parser.add_argument("--force", action="store_true", help="replace existing non-empty class folders")
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: CPU count, max 8)")
    parser.add_argument(
        "--supersample", type=int, default=DEFAULT_SUPERSAMPLE, help="anti-aliasing samples per pixel side"
    )
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="clean",
        help="capture style: clean (ideal Lambertian render, the default) or real (glossy highlights, cast shadows, "
        "per-image exposure and white balance, slight blur, sensor noise)",
    )
    parser.add_argument(
        "--without",
        default="",
        metavar="NAMES",
        help=f"comma-separated capture effects to switch off, for ablations (from: {', '.join(EFFECTS)})",
    )
    parser.add_argument(
        "--capture",
        choices=CAPTURES,
        default="ring",
        help="camera set-up: ring (MAD-Sim: 210 posed views on a 14 x 15 grid, white background; the default) or "
        "handheld (MAD-Real-like: --views unposed views around the object standing on a textured table with a wall "
        "behind, test views likewise; no transforms.json, the true poses and training masks are in truth/). "
        "Combines with --style real",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=None,
        help=f"training views of a --capture handheld class (default {DEFAULT_VIEWS}); not allowed with ring, whose "
        "grid is fixed",
    )
    parser.add_argument(
        "--difficulty",
        choices=("standard", "hard"),
        default="standard",
        help="test-view conditions: standard, or hard (roll up to ±5 degrees and the look-at point up to 0.05 off "
        "the object centre for ring captures; defects at 0.6x the size, from 20 px up)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        style = resolve_capture_style(args.style, args.without)
        if args.views is not None and args.capture != "handheld":
            raise InvalidOptionError("--views applies to --capture handheld only (the ring grid has 210 views)")
    except InvalidOptionError as error:
        print(f"pad-synth: error: {error}", file=sys.stderr)
        return 2
    tune_allocator()
    # Turn a plain `kill` into an exception so that the unfinished class's temporary folder is removed too.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        generate_dataset(
            args.out,
            classes=args.classes,
            size=args.size,
            seed=args.seed,
            n_test_good=args.n_test_good,
            n_test_defect=args.n_test_defect,
            force=args.force,
            workers=args.workers,
            supersample=args.supersample,
            style=style,
            capture=args.capture,
            views=DEFAULT_VIEWS if args.views is None else args.views,
            difficulty=args.difficulty,
        )
    except (FileExistsError, InvalidOptionError) as error:
        print(f"pad-synth: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pad-synth: interrupted; unfinished class folders were removed", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def entrypoint() -> None:
    """Console-script entry point (``pad-synth``); ``PAD_DEBUG=1`` shows tracebacks instead of one-line errors."""
    with user_errors("pad-synth"):
        sys.exit(main())


if __name__ == "__main__":
    entrypoint()
