"""Executing the benchmark's runs: skip the finished ones, log each run, store each result atomically.

For every run of its shard the runner checks ``runs/<class>/<method>/<setting>/result.json``; a run that has
one is skipped (``force`` redoes it), so an interrupted benchmark resumes where it stopped. A run's own output
(nerfstudio's training log, warnings, tracebacks) goes to ``log.txt`` next to its result, while the terminal
shows progress bars. A failing run is logged and reported at the end without stopping the others; its
result file is simply never written, so the next invocation retries it.
"""

from __future__ import annotations

import contextlib
import datetime
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pad_nerfstudio.bench.attributes import class_attributes
from pad_nerfstudio.bench.evaluate import read_scores_csv
from pad_nerfstudio.bench.methods import RELEVANT_OPTIONS, REPORT_FOLDER, MethodOptions, RunContext, Runner
from pad_nerfstudio.bench.plan import BenchRun, run_dir
from pad_nerfstudio.bench.store import (
    RESULT_FILE,
    RESULT_VERSION,
    json_ready,
    read_json,
    read_result,
    write_json_atomic,
)

__all__ = ["RunSummary", "BenchProgress", "execute_runs", "ensure_class_attributes", "error_line"]

LOG_FILE = "log.txt"
CLASSES_FOLDER = "classes"


@dataclass
class RunSummary:
    """What one invocation did."""

    done: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    """Run key -> its log file."""
    errors: Dict[str, str] = field(default_factory=dict)
    """Run key -> its error, one line (the traceback is in the log file)."""
    stale: List[str] = field(default_factory=list)
    """Skipped runs whose stored options differ from this invocation's (rerun them with --force)."""


class BenchProgress:
    """Two progress bars: runs of this shard, and the stage of the current run. Silent when disabled."""

    def __init__(self, console: Optional[Console] = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress: Optional[Progress] = None
        if enabled:
            # The console writes to the terminal captured now: during a run sys.stdout is that run's log file.
            self.console = console or Console(file=sys.stdout)
            self.progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
        self._runs = self._stage = None

    def __enter__(self) -> "BenchProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start(self, total: int) -> None:
        if self.progress is not None:
            self._runs = self.progress.add_task("runs", total=total)
            self._stage = self.progress.add_task("", total=1, visible=False)

    def begin_run(self, run: BenchRun) -> None:
        if self.progress is not None:
            if not self.console.is_terminal:  # a batch job's log: one line per run instead of live bars
                task = self.progress.tasks[self._runs]
                self.console.print(f"[{int(task.completed) + 1}/{int(task.total or 0)}] {run.key}")
            self.progress.update(self._runs, description=f"runs: {run.key}")
            self.progress.reset(self._stage, total=1, description="  starting", visible=True)

    def stage(self, name: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self._stage, description=f"  {name}", completed=done, total=max(total, 1))

    def end_run(self) -> None:
        if self.progress is not None:
            self.progress.update(self._stage, visible=False)
            self.progress.advance(self._runs)

    def print(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, soft_wrap=True)  # a log path broken over lines cannot be pasted


def ensure_class_attributes(out: Path, class_dir: Path) -> Dict[str, Any]:
    """The class's attributes (see `attributes`), computed once per class and cached under ``out/classes``."""
    path = Path(out) / CLASSES_FOLDER / class_dir.name / "attributes.json"
    cached = read_json(path)
    if cached is not None:
        return cached
    attributes = json_ready({**class_attributes(class_dir), "class_dir": str(class_dir)})
    write_json_atomic(path, attributes)
    return attributes


def error_line(error: BaseException, limit: int = 300) -> str:
    """``ExceptionType: first line of the message``, shortened to ``limit`` characters: what a terminal line says.

    Example:
        >>> error_line(ValueError("bad size\\nmore detail"))
        'ValueError: bad size'
    """
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    line = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _stored_options_differ(result: Dict[str, Any], options: Dict[str, Any], method: str) -> bool:
    stored = result.get("options") or {}
    return any(stored.get(key) != options.get(key) for key in RELEVANT_OPTIONS.get(method, ()))


def _result_record(
    context: RunContext, output: Dict[str, Any], attributes: Dict[str, Any], options: Dict[str, Any], seconds: float
) -> Dict[str, Any]:
    """The result.json of a finished run: identity, ns-eval metrics, per-query image scores, attributes, options."""
    run = context.run
    scores_path = context.run_dir / REPORT_FOLDER / "scores.csv"
    return {
        "version": RESULT_VERSION,
        "class_name": run.class_name,
        "method": run.method,
        "setting": run.setting,
        "train_views": run.train_views,
        "class_dir": str(context.class_dir),
        "metrics": dict(output["metrics"]),
        "train_seconds": output.get("train_seconds"),
        "wall_seconds": seconds,
        # Per-query image scores (for ROC curves in the merged report): the run's scores.csv, as ns-eval wrote it.
        "queries": read_scores_csv(scores_path) if scores_path.is_file() else output.get("queries", []),
        "attributes": attributes,
        "options": options,
        "details": output.get("details", {}),
        "finished_at": _utc_now(),
        "host": platform.node(),
    }


def execute_runs(
    runs: Sequence[BenchRun],
    class_dirs: Mapping[str, Path],
    out: Path,
    runners: Mapping[str, Runner],
    options: Optional[MethodOptions] = None,
    force: bool = False,
    fail_fast: bool = False,
    progress: Optional[BenchProgress] = None,
) -> RunSummary:
    """Run every run not finished yet (all of them with ``force``) and store its result.

    Args:
        runs: the runs of this shard.
        class_dirs: class folder of each class name.
        out: benchmark output folder.
        runners: the method runner of each method name (`methods.RUNNERS`; tests pass fakes).
        options: method options, stored with every result.
        force: redo finished runs, replacing their results.
        fail_fast: re-raise the first failure instead of logging it and going on.
        progress: progress display (none by default).

    Example:
        >>> plan = plan_runs(["01Gorilla"], ["patchcore"])  # doctest: +SKIP
        >>> execute_runs(plan, {"01Gorilla": Path("data/01Gorilla")}, Path("bench"), RUNNERS)  # doctest: +SKIP
    """
    options = options or MethodOptions()
    progress = progress or BenchProgress(enabled=False)
    described = options.describe()
    summary = RunSummary()
    progress.start(len(runs))
    for run in runs:
        progress.begin_run(run)
        directory = run_dir(out, run)
        result_path = directory / RESULT_FILE
        existing = read_result(result_path, run)
        if existing is not None and not force:
            summary.skipped.append(run.key)
            if _stored_options_differ(existing, described, run.method):
                summary.stale.append(run.key)
            progress.end_run()
            continue
        if run.method not in runners:
            raise KeyError(f"No runner for method {run.method!r}; known: {', '.join(runners)}.")
        directory.mkdir(parents=True, exist_ok=True)
        class_dir = Path(class_dirs[run.class_name])
        log_path = directory / LOG_FILE
        context = RunContext(run, class_dir, directory, options, force=force, progress=progress.stage)
        with (
            log_path.open("a", encoding="utf-8") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            print(f"===== {run.key} started {_utc_now()} on {platform.node()} (class folder {class_dir})", flush=True)
            started = time.perf_counter()
            try:
                attributes = ensure_class_attributes(out, class_dir)
                output = runners[run.method](context)
                result = _result_record(context, output, attributes, described, time.perf_counter() - started)
                write_json_atomic(result_path, json_ready(result))
            except Exception as error:
                traceback.print_exc()
                print(f"===== {run.key} FAILED after {time.perf_counter() - started:.1f} s", flush=True)
                summary.failed[run.key] = str(log_path)
                summary.errors[run.key] = error_line(error)
                progress.print(f"[red]{run.key} failed:[/red] {escape(summary.errors[run.key])} (log: {log_path})")
                if fail_fast:
                    raise
                progress.end_run()
                continue
            except BaseException:  # Ctrl-C, SystemExit: log and stop; the result file was never written
                print(f"===== {run.key} INTERRUPTED after {time.perf_counter() - started:.1f} s", flush=True)
                raise
            print(f"===== {run.key} finished in {time.perf_counter() - started:.1f} s", flush=True)
        summary.done.append(run.key)
        progress.end_run()
    return summary
