"""Progress of long commands on stderr: rich bars on a terminal, plain lines at a bounded rate everywhere else.

Every long ``medguard`` command (generate, ingest, deidentify, train, diagnose, demo) reports through one
:class:`ProgressBoard`, so that a terminal shows live bars and a pipe, a ``tee`` or a CI log still gets a line
such as ``ingest observations: 120,000/400,000 rows (30%)`` at most every :data:`PLAIN_INTERVAL_S` seconds per
task (and always its first and last). Progress goes to stderr only: ``--json`` keeps stdout pure JSON.

Layers report through plain callbacks and never import this module: :data:`Progress` is
``(task, completed, total or None)``, the same shape as the analytics flow's ``(step, index, steps)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

__all__ = ["PLAIN_INTERVAL_S", "PerTask", "Progress", "ProgressBoard", "ProgressTask", "Steps"]

Progress = Callable[[str, int, "int | None"], None]

# A CI log or `make demo | tee` should show life every few seconds, not fill with thousands of lines.
PLAIN_INTERVAL_S = 10.0
# A step that reports nothing of its own (a demo step) says it is still running this often, off a terminal.
HEARTBEAT_S = 30.0


class ProgressTask:
    """One bar (a table, a step, a population): advanced by counts, finished once."""

    def __init__(self, board: ProgressBoard, name: str, total: int | None, unit: str) -> None:
        self._board, self.name, self.total, self.unit = board, name, total, unit
        self.completed = 0
        self._finished = False
        self._last_line: float | None = None
        self._id: TaskID | None = board._add(self)

    def advance(self, count: int = 1) -> None:
        """Add ``count`` to what is done."""
        self.update(self.completed + count)

    def update(self, completed: int, total: int | None = None) -> None:
        """Set what is done (and the total, when it became known)."""
        self.completed = completed
        if total is not None:
            self.total = total
        self._board._show(self)

    def finish(self) -> None:
        """Mark the task done (a plain line says so); finishing twice is harmless."""
        if self._finished:
            return
        self._finished = True
        if self.total is None:
            self.total = self.completed
        self._board._show(self, final=True)

    def describe(self) -> str:
        """``name: 120,000/400,000 rows (30%)``, or ``name: 120,000 rows`` while the total is unknown."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            share = min(self.completed / self.total, 1.0)
            return f"{self.name}: {self.completed:,}/{self.total:,}{unit} ({share:.0%})"
        return f"{self.name}: {self.completed:,}{unit}"


class ProgressBoard:
    """Where a command's progress goes: live rich bars on a terminal, plain lines on a pipe, or nowhere.

    Use it as a context manager; :meth:`note` prints a line (a demo step starting or ending) in either mode.

    Args:
        enabled: False shows nothing at all.
        console: the stderr console (tests pass one writing to a buffer).
        live: rich bars (True) or plain lines (False); by default bars exactly when ``console`` is a terminal.
        interval: plain mode's least number of seconds between two lines of one task.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, *, enabled: bool = True, console: Console | None = None, live: bool | None = None,
                 interval: float = PLAIN_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live = self.console.is_terminal if live is None else live
        self.interval, self._clock = interval, clock
        self._rich: RichProgress | None = None
        if enabled and self.live:
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                      transient=True)

    @classmethod
    def to_stream(cls, stream: IO[str], **kwargs: object) -> ProgressBoard:
        """A plain-line board writing to ``stream`` (tests, logs)."""
        return cls(console=Console(file=stream, force_terminal=False, width=200), live=False, **kwargs)  # type: ignore[arg-type]

    def __enter__(self) -> ProgressBoard:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()

    def task(self, name: str, total: int | None = None, unit: str = "") -> ProgressTask:
        """A new task: a bar at once on a terminal; in plain mode its first line comes with its first update."""
        return ProgressTask(self, name, total, unit)

    def note(self, text: str) -> None:
        """One line on stderr, above the bars on a terminal."""
        if self.enabled:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def running(self, name: str, every: float = HEARTBEAT_S) -> Iterator[None]:
        """Around work that reports no progress of its own: a spinner with the time elapsed on a terminal, else a
        line ``name: still running (1 min 30 s)`` every ``every`` seconds."""
        if not self.enabled:
            yield
            return
        if self._rich is not None:
            task = self._rich.add_task(f"{name}: running", total=None)
            try:
                yield
            finally:
                self._rich.remove_task(task)
            return
        stop = threading.Event()
        started = self._clock()

        def beat() -> None:
            while not stop.wait(every):
                elapsed = int(self._clock() - started)
                minutes = f"{elapsed // 60} min " if elapsed >= 60 else ""
                self.console.print(f"{name}: still running ({minutes}{elapsed % 60} s)", markup=False,
                                   highlight=False, soft_wrap=True)

        beater = threading.Thread(target=beat, name=f"progress {name}", daemon=True)
        beater.start()
        try:
            yield
        finally:
            stop.set()
            beater.join()

    def callback(self, prefix: str, unit: str = "rows") -> PerTask:
        """A layer callback ``(task, completed, total)``: one task per name, e.g. ``ingest observations``."""
        return PerTask(self, prefix, unit)

    def steps(self, prefix: str, unit: str = "steps") -> Steps:
        """A step callback ``(step, index, steps)``: one task, each step announced (a table is a step too)."""
        return Steps(self, prefix, unit)

    # internals ----------------------------------------------------------------------------------------------

    def _add(self, task: ProgressTask) -> TaskID | None:
        if self._rich is None:
            return None
        return self._rich.add_task(task.name, total=task.total)

    def _show(self, task: ProgressTask, final: bool = False) -> None:
        if not self.enabled:
            return
        if self._rich is not None and task._id is not None:
            self._rich.update(task._id, description=task.name, completed=task.completed, total=task.total)
            if final:
                self._rich.update(task._id, visible=False)
                self.console.print(task.describe() + " — done", markup=False, highlight=False)
            return
        now = self._clock()
        if final or task._last_line is None or now - task._last_line >= self.interval:
            task._last_line = now
            self.console.print(task.describe() + (" — done" if final else ""), markup=False, highlight=False,
                               soft_wrap=True)


class PerTask:
    """``(task, completed, total)`` from a layer: a board task per name, finished when it reaches its total."""

    def __init__(self, board: ProgressBoard, prefix: str, unit: str) -> None:
        self._board, self._prefix, self._unit = board, prefix, unit
        self.tasks: dict[str, ProgressTask] = {}

    def __call__(self, name: str, completed: int, total: int | None = None) -> None:
        task = self.tasks.get(name)
        if task is None:
            task = self.tasks[name] = self._board.task(f"{self._prefix} {name}".strip(), total, self._unit)
        if total is not None:
            task.total = total
        if task.total is not None and completed >= task.total:
            task.completed = completed
            task.finish()  # one line for a task done at once, not its 100 % and then its end
        else:
            task.update(completed)

    def expect(self, name: str, total: int | None) -> None:
        """Give ``name``'s task a total before the layer reports (a Parquet file's row count, from its footer)."""
        if name not in self.tasks:
            self.tasks[name] = self._board.task(f"{self._prefix} {name}".strip(), total, self._unit)

    def finish(self) -> None:
        """Finish every task still open (the totals it did not know are what was done)."""
        for task in self.tasks.values():
            task.finish()


class Steps:
    """``(step, index, steps)``: one task named after the step reported last (index = steps done so far)."""

    def __init__(self, board: ProgressBoard, prefix: str, unit: str = "steps") -> None:
        self._board, self._prefix, self._unit = board, prefix, unit
        self.task: ProgressTask | None = None

    def __call__(self, step: str, index: int, total: int) -> None:
        if self.task is None:
            self.task = ProgressTask(self._board, self._prefix, total, self._unit)
        self.task.name = f"{self._prefix}: {step}"
        self.task._last_line = None  # a step is long and rare: each one gets its line
        self.task.update(index, total)

    def finish(self) -> None:
        """All steps done."""
        if self.task is not None:
            self.task.name = self._prefix
            self.task.update(self.task.total or self.task.completed)
            self.task.finish()
