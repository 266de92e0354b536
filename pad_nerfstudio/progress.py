"""Progress of a long loop (the test queries of `ns-eval`), readable in a terminal and in a log file alike.

On an interactive terminal it is rich's live bar, redrawn in place. Elsewhere (a cluster job's log, ``ns-eval ... |
tee``, a CI runner) a live bar shows nothing until the loop is over, so `PlainProgress` prints one plain line
every ~10 % instead: done/total, time elapsed and the time left at the pace so far. Both have rich's
``with progress: progress.track(sequence, description=...)`` interface.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar, Union

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_every(total: int, fraction: float = 0.1) -> int:
    """Print a plain progress line after every this many items: ``fraction`` of ``total``, at least 1.

    Example:
        >>> progress_every(120), progress_every(5), progress_every(0)
        (12, 1, 1)
    """
    return max(1, round(total * fraction))


def format_duration(seconds: float) -> str:
    """A duration as a person reads it in a log.

    Example:
        >>> format_duration(42.4), format_duration(185), format_duration(7380)
        ('42 s', '3 min 05 s', '2 h 03 min')
    """
    seconds = round(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(description: str, done: int, total: int, elapsed: float) -> str:
    """One plain progress line: done/total, elapsed time and the time left at the pace so far.

    Example:
        >>> progress_line("Inspecting cat queries", 12, 120, 30.0)
        'Inspecting cat queries: 12/120 (10 %), 30 s elapsed, about 4 min 30 s left'
    """
    line = f"{description}: {done}/{total} ({100 * done / max(total, 1):.0f} %), {format_duration(elapsed)} elapsed"
    if 0 < done < total:
        line += f", about {format_duration(elapsed / done * (total - done))} left"
    return line


class PlainProgress:
    """rich's ``Progress.track`` for a console that is not a terminal: a plain line every ``fraction`` of the way."""

    def __init__(self, console: Console, fraction: float = 0.1, clock: Callable[[], float] = time.perf_counter) -> None:
        self.console = console
        self.fraction = fraction
        self.clock = clock

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def track(self, sequence: Iterable[T], description: str = "Working...", total: Optional[int] = None) -> Iterator[T]:
        total = len(sequence) if total is None else total  # type: ignore[arg-type]
        every = progress_every(total, self.fraction)
        started = self.clock()
        for done, item in enumerate(sequence, start=1):
            yield item  # resumed once the caller's loop body has run for this item
            if done % every == 0 or done == total:
                line = progress_line(description, done, total, self.clock() - started)
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def live_or_plain_progress(console: Console) -> Union[Progress, PlainProgress]:
    """rich's live progress bar when ``console`` is an interactive terminal, else plain lines every ~10 %.

    Example:
        >>> with live_or_plain_progress(CONSOLE) as progress:  # doctest: +SKIP
        ...     for index in progress.track(range(len(queries)), description="Inspecting queries"):
        ...         inspect(queries[index])
    """
    if not console.is_interactive:
        return PlainProgress(console)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=True)
