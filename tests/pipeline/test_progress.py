"""Progress on stderr: plain lines at a bounded rate off a terminal, rich bars on one, nothing when disabled."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline.progress import ProgressBoard


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plain(clock: _Clock, interval: float = 10.0) -> tuple[ProgressBoard, io.StringIO]:
    out = io.StringIO()
    return ProgressBoard.to_stream(out, interval=interval, clock=clock), out


def test_when_a_task_advances_quickly_then_plain_mode_prints_its_first_line_and_its_end_only() -> None:
    clock = _Clock()
    board, out = _plain(clock)
    with board:
        task = board.task("ingest observations", total=400_000, unit="rows")
        for _ in range(40):
            task.advance(10_000)
            clock.now += 0.1
        task.finish()

    assert out.getvalue().splitlines() == ["ingest observations: 10,000/400,000 rows (2%)",
                                           "ingest observations: 400,000/400,000 rows (100%) — done"]


def test_when_time_passes_then_plain_mode_prints_at_most_one_line_per_interval_per_task() -> None:
    clock = _Clock()
    board, out = _plain(clock, interval=10.0)
    with board:
        task = board.task("ingest observations", total=400_000, unit="rows")
        for step in range(1, 41):
            clock.now = step * 1.0  # one update a second for 40 seconds
            task.update(step * 10_000)

    lines = out.getvalue().splitlines()
    assert lines[0] == "ingest observations: 10,000/400,000 rows (2%)"
    assert "ingest observations: 110,000/400,000 rows (28%)" in lines
    assert len(lines) == 4  # at 1 s, 11 s, 21 s and 31 s


def test_when_the_total_is_unknown_then_the_line_counts_without_a_share_and_the_end_gives_the_count() -> None:
    clock = _Clock()
    board, out = _plain(clock)
    callback = board.callback("ingest")
    callback("patients", 300, None)
    callback.finish()

    assert out.getvalue().splitlines() == ["ingest patients: 300 rows", "ingest patients: 300/300 rows (100%) — done"]


def test_when_steps_are_reported_then_each_step_gets_its_line_whatever_the_interval() -> None:
    clock = _Clock()
    board, out = _plain(clock, interval=3600)
    steps = board.steps("train")
    for index, name in enumerate(("features", "screen", "train")):
        steps(name, index, 3)
    steps.finish()

    assert out.getvalue().splitlines() == [
        "train: features: 0/3 steps (0%)", "train: screen: 1/3 steps (33%)", "train: train: 2/3 steps (67%)",
        "train: 3/3 steps (100%) — done"]


def test_when_a_task_is_created_and_never_advanced_then_plain_mode_prints_nothing() -> None:
    board, out = _plain(_Clock())
    board.task("generate", total=3, unit="patients")
    assert out.getvalue() == ""


def test_when_the_board_is_disabled_then_nothing_is_printed() -> None:
    out = io.StringIO()
    board = ProgressBoard(console=Console(file=out), live=False, enabled=False)
    with board:
        task = board.task("generate", total=3)
        task.advance(3)
        task.finish()
        board.note("demo ingest: started")
    assert out.getvalue() == ""


def test_when_stderr_is_a_terminal_then_bars_are_drawn_and_each_finished_task_leaves_its_line() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    board = ProgressBoard(console=console)
    assert board.live
    with board:
        task = board.task("generate", total=10, unit="patients")
        task.advance(10)
        task.finish()
    assert "generate: 10/10 patients (100%) — done" in out.getvalue()


def test_when_a_note_is_printed_then_it_is_one_line_without_markup() -> None:
    board, out = _plain(_Clock())
    board.note("demo [bold]ingest[/bold]: done in 1.5 s")
    assert out.getvalue() == "demo [bold]ingest[/bold]: done in 1.5 s\n"


def test_when_work_reports_nothing_then_plain_mode_says_it_is_still_running_until_it_ends() -> None:
    import threading

    readings = [0.0]  # started at 0 s; each later reading is 90 s, 95 s, 100 s…

    def clock() -> float:
        now = readings[-1]
        readings.append(90.0 if now == 0.0 else now + 5.0)
        return now

    board, out = _plain(clock)
    beats = threading.Semaphore(0)
    original = board.console.print

    def counted(*args, **kwargs) -> None:
        original(*args, **kwargs)
        beats.release()

    board.console.print = counted  # type: ignore[method-assign]
    with board.running("demo ingest", every=0.01):
        assert beats.acquire(timeout=5) and beats.acquire(timeout=5)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["demo ingest: still running (1 min 30 s)", "demo ingest: still running (1 min 35 s)"]
    settled = len(lines)
    threading.Event().wait(0.05)
    assert len(out.getvalue().splitlines()) == settled, "no beat after the work ended"
