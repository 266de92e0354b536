"""`pad-bench`: the PAD benchmark runner (train + evaluate every class with every method, then report).

    pad-bench --data ROOT [--classes all|gorilla,cat] [--methods omnipose-ad,patchcore,nearest-view]
              [--train-views all|210,100,50] [--out DIR] [--shard i/n] [--force]
    pad-bench report --out DIR

The first form runs the (class, method, setting) runs of its shard that have no stored result yet and,
unsharded, writes the report; the second rebuilds the report from whatever results ``DIR/runs`` holds (e.g.
after copying the shards of a cluster job array together). Example Slurm array with 8 GPUs:

    #SBATCH --array=0-7
    pad-bench --data mad --out bench --downscale-factor 4 --shard $SLURM_ARRAY_TASK_ID/8
    # afterwards, once: pad-bench report --out bench
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Literal, Optional, Sequence

import tyro
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pad_nerfstudio.bench.plan import (
    BenchOptionError,
    ReportError,
    parse_methods,
    parse_shard,
    parse_train_views,
    plan_runs,
    resolve_classes,
    shard_runs,
)
from pad_nerfstudio.cli_errors import user_errors
from pad_nerfstudio.data.mad_layout import MADFormatError

if TYPE_CHECKING:
    from pad_nerfstudio.bench.runner import RunSummary

# The runners, the run loop and the report are imported where they are used: they load torch and nerfstudio, seconds
# (tens on a busy laptop) that `pad-bench --help` or a mistyped option should not cost.

CONSOLE = Console()


@dataclass
class BenchConfig:
    """Train and evaluate every class with every method under the PAD protocol; `pad-bench report --out DIR`
    rebuilds the report from stored results."""

    data: Path
    """Dataset root holding MAD-format class folders (MAD-Sim, pad-synth output), or one class folder."""
    classes: str = "all"
    """"all", or comma-separated class names, written loosely ("gorilla,cat", "01Gorilla")."""
    methods: str = "omnipose-ad,patchcore,nearest-view"
    """Comma-separated methods (or "all"): omnipose-ad, patchcore, nearest-view."""
    train_views: str = "all"
    """Training-view settings, comma-separated: "all" and/or numbers ("210,100,50": the paper's Table 3)."""
    out: Path = Path("outputs/pad-bench")
    """Benchmark folder: runs/<class>/<method>/<setting>/ (result.json, log.txt, report/), results.*, plots/."""
    shard: str = "0/1"
    """Run only shard i of n ("i/n", 0 <= i < n) of the canonical run order, e.g. "$SLURM_ARRAY_TASK_ID/8"."""
    force: bool = False
    """Redo finished runs (and a finished omnipose-ad training), replacing their results."""
    preset: Literal["auto", "full", "lite"] = "auto"
    """omnipose-ad preset: full (`omnipose-ad`), lite (`omnipose-ad-lite`), auto = full with CUDA, else lite."""
    max_num_iterations: Optional[int] = None
    """Override the omnipose-ad training steps (for smoke runs); default: the preset's."""
    downscale_factor: int = 1
    """Image downscale factor for every method (MAD-Sim's 800 px: 4 gives the usual 200 px)."""
    patchcore_coreset_ratio: float = 0.1
    """Fraction of the PatchCore memory bank kept by the greedy coreset."""
    report: bool = True
    """Write results.json/.csv/.md and plots after the runs (sharded runs leave it to `pad-bench report`)."""
    fail_fast: bool = False
    """Stop at the first failing run instead of logging it and going on."""
    dry_run: bool = False
    """Only list the runs of this shard and whether they are finished."""


@dataclass
class ReportConfig:
    """Merge the stored results under --out (one machine's, or copied-together shards) into the report."""

    out: Path = Path("outputs/pad-bench")
    """Benchmark folder holding runs/<class>/<method>/<setting>/result.json."""
    plots: bool = True
    """Also draw the plots (bars, ROC curves, attribute scatter, training views)."""


def _print_summary(summary: RunSummary, out: Path) -> None:
    table = Table(title="pad-bench")
    table.add_column("runs")
    table.add_column("count", justify="right")
    table.add_row("done now", str(len(summary.done)))
    table.add_row("already finished (skipped)", str(len(summary.skipped)))
    table.add_row("failed", str(len(summary.failed)))
    CONSOLE.print(table)
    for key, log in summary.failed.items():
        CONSOLE.print(f"[red]failed[/red] {key}: {escape(summary.errors.get(key, ''))} (log: {log})", soft_wrap=True)
    if summary.stale:
        CONSOLE.print(
            f"[yellow]{len(summary.stale)} skipped runs were made with other options "
            f"({', '.join(summary.stale[:4])}{' ...' if len(summary.stale) > 4 else ''}); pass --force to redo them "
            "or use another --out."
        )


def run(config: BenchConfig) -> int:
    """Run the benchmark described by ``config``; returns the process exit code."""
    if config.max_num_iterations is not None and config.max_num_iterations < 1:
        raise BenchOptionError("--max-num-iterations must be at least 1.")
    if config.downscale_factor < 1:
        raise BenchOptionError("--downscale-factor must be at least 1.")
    if not 0.0 < config.patchcore_coreset_ratio <= 1.0:
        raise BenchOptionError("--patchcore-coreset-ratio must be in (0, 1].")
    class_dirs = {folder.name: folder for folder in resolve_classes(config.data, config.classes)}
    plan = plan_runs(list(class_dirs), parse_methods(config.methods), parse_train_views(config.train_views))
    index, count = parse_shard(config.shard)
    runs = shard_runs(plan, index, count)
    CONSOLE.print(
        f"pad-bench: {len(class_dirs)} classes, {len(plan)} runs in all, {len(runs)} in shard {index}/{count} "
        f"-> {config.out}"
    )
    if config.dry_run:
        from pad_nerfstudio.bench.plan import run_dir
        from pad_nerfstudio.bench.store import RESULT_FILE, read_result

        for item in runs:
            finished = read_result(run_dir(config.out, item) / RESULT_FILE, item) is not None
            CONSOLE.print(f"  {item.key}  {'finished' if finished else 'to do'}")
        return 0
    from pad_nerfstudio.bench.methods import RUNNERS, MethodOptions
    from pad_nerfstudio.bench.report import write_benchmark_report
    from pad_nerfstudio.bench.runner import BenchProgress, execute_runs

    options = MethodOptions(
        preset=config.preset,
        max_num_iterations=config.max_num_iterations,
        downscale_factor=config.downscale_factor,
        patchcore_coreset_ratio=config.patchcore_coreset_ratio,
    )
    with BenchProgress(Console(file=sys.stdout)) as progress:
        summary = execute_runs(
            runs,
            class_dirs,
            config.out,
            RUNNERS,
            options,
            force=config.force,
            fail_fast=config.fail_fast,
            progress=progress,
        )
    _print_summary(summary, config.out)
    if config.report and count == 1:
        write_benchmark_report(config.out, expected=plan)
        CONSOLE.print(f"Report: {config.out / 'results.md'} (also results.json, results.csv, plots/)")
    elif count > 1:
        CONSOLE.print(
            f"Shard {index}/{count} done; once all shards are, merge with: pad-bench report --out {config.out}"
        )
    return 1 if summary.failed else 0


def report(config: ReportConfig) -> int:
    """Write the report from stored results; returns the process exit code."""
    from pad_nerfstudio.bench.report import write_benchmark_report

    summary = write_benchmark_report(config.out, plots=config.plots)
    runs = len(summary["runs"])
    CONSOLE.print(f"Report of {runs} runs: {config.out / 'results.md'} (also results.json, results.csv, plots/)")
    if summary["missing"]:
        CONSOLE.print(f"[yellow]{len(summary['missing'])} runs missing: {', '.join(summary['missing'][:6])} ...")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line (``report`` subcommand or the default run) and execute it."""
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "report":
            return report(tyro.cli(ReportConfig, args=args[1:], prog="pad-bench report"))
        if args and args[0] == "run":
            args = args[1:]
        return run(tyro.cli(BenchConfig, args=args, prog="pad-bench"))
    except (BenchOptionError, ReportError, MADFormatError) as error:
        CONSOLE.print(f"[bold red]pad-bench:[/bold red] {error}")
        return 2
    except KeyboardInterrupt:
        CONSOLE.print(
            "[bold red]pad-bench:[/bold red] interrupted; finished runs are kept and the unfinished one will be "
            "redone: run the same command again to resume."
        )
        return 130


def entrypoint() -> None:
    """Console-script entry point (``pad-bench``); ``PAD_DEBUG=1`` shows tracebacks instead of one-line errors."""
    with user_errors("pad-bench"):
        sys.exit(main())


if __name__ == "__main__":
    entrypoint()
