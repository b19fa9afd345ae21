"""Progress lines on a fake clock."""

from __future__ import annotations

import io

from recsim_stream.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_prints_nothing_before_the_interval() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("simulate", total=1000, every_s=5.0, clock=clock, out=out)
    clock.now += 4.0
    progress.update(500)
    assert out.getvalue() == ""


def test_line_has_count_total_recent_and_overall_rate_and_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("simulate", total=1_000_000, every_s=5.0, clock=clock, out=out)
    clock.now += 5.0
    progress.update(100_000)
    clock.now += 5.0
    progress.update(20_000)
    assert out.getvalue().splitlines() == [
        "simulate: 100,000/1,000,000 events  20,000/s (overall 20,000/s)  ETA 45s",
        "simulate: 120,000/1,000,000 events  4,000/s (overall 12,000/s)  ETA 3m40s",
    ]


def test_without_a_total_there_is_no_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("replay", unit="records", every_s=1.0, clock=clock, out=out)
    clock.now += 2.0
    progress.update(50)
    assert out.getvalue() == "replay: 50 records  25/s (overall 25/s)\n"


def test_finish_always_prints_the_final_line() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("convert", total=10, every_s=60.0, clock=clock, out=out)
    progress.update(10)
    clock.now += 2.0
    progress.finish()
    assert out.getvalue() == "convert: 10/10 events  5/s (overall 5/s)\n"


def test_writes_to_stderr_by_default(capsys) -> None:
    clock = FakeClock()
    progress = Progress("bench", every_s=0.0, clock=clock)
    clock.now += 1.0
    progress.update(3)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "bench: 3 events  3/s (overall 3/s)\n")


def test_durations_read_naturally() -> None:
    assert [format_duration(s) for s in (18.2, 185, 7620)] == ["18s", "3m05s", "2h07m"]
