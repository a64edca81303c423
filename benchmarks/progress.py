"""Progress and log lines of the benchmark commands: rich's bar and console, or plain lines where rich is not
installed (e.g. the lent GPU machine)."""
from __future__ import annotations

import sys
import time


class PlainConsole:
    """Stand-in for rich's Console where rich is not installed."""

    def log(self, *a):
        print(time.strftime("[%H:%M:%S]"), *a, file=sys.stderr, flush=True)

    print = log


class PlainProgress:
    def __init__(self):
        self.console, self.total, self.done = PlainConsole(), 0, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, total):
        self.total = total
        return 0

    def update(self, task, completed=None, advance=0, description=""):
        self.done = completed if completed is not None else self.done + advance
        self.console.log(f"[{self.done}/{self.total}] {description}")


try:
    from rich.console import Console
    console = Console(stderr=True)
except ImportError:
    console = PlainConsole()


def progress():
    """A progress bar (steps done of the total, elapsed time) on stderr."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return PlainProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
