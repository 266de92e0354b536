"""Progress of ns-eval's query loop: rich's live bar on a terminal, a plain line every ~10 % in a log file."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from pad_nerfstudio.progress import (
    PlainProgress,
    format_duration,
    live_or_plain_progress,
    progress_every,
    progress_line,
)


def test_progress_every_is_a_tenth_and_at_least_one():
    assert [progress_every(total) for total in (0, 1, 5, 9, 10, 48, 120, 1000)] == [1, 1, 1, 1, 1, 5, 12, 100]


def test_progress_line_and_durations():
    assert progress_line("Inspecting cat queries", 12, 120, 30.0) == (
        "Inspecting cat queries: 12/120 (10 %), 30 s elapsed, about 4 min 30 s left"
    )
    assert progress_line("q", 120, 120, 300.0) == "q: 120/120 (100 %), 5 min 00 s elapsed"  # done: nothing left
    assert [format_duration(s) for s in (0, 59.4, 59.6, 61, 3599, 3600, 90061)] == [
        "0 s",
        "59 s",
        "1 min 00 s",
        "1 min 01 s",
        "59 min 59 s",
        "1 h 00 min",
        "25 h 01 min",
    ]


def test_plain_progress_prints_every_tenth_with_eta():
    output = io.StringIO()
    now = [100.0]
    progress = PlainProgress(Console(file=output, width=40), clock=lambda: now[0])
    seen = []
    with progress:
        for index in progress.track(range(25), description="Inspecting cat queries"):
            now[0] += 2.0  # two seconds per query
            seen.append(index)
    assert seen == list(range(25))
    lines = output.getvalue().splitlines()
    assert len(lines) == 13  # every 2 of 25 (round(2.5) == 2), and the last one
    assert lines[0] == "Inspecting cat queries: 2/25 (8 %), 4 s elapsed, about 46 s left"  # one line, not wrapped at 40
    assert lines[-1] == "Inspecting cat queries: 25/25 (100 %), 50 s elapsed"


def test_live_bar_only_on_an_interactive_terminal():
    assert isinstance(live_or_plain_progress(Console(file=io.StringIO())), PlainProgress)  # a file, a pipe: plain
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    assert isinstance(live_or_plain_progress(terminal), Progress)
