"""The grid of ``bench scaling``: its points, per-point summaries, merged runs, the updaters' own rates."""

from __future__ import annotations

import pytest

from recsim_stream.bench_scaling import GridOptions, GridRun, merge_grids, reported_rate, summarise_grid


def run(shards: int, updaters: int, drain_s: float, layout: str = "head", drained: int = 90_000) -> GridRun:
    return GridRun(shards, updaters, layout, 100_000, drained, drain_s, 5.0, 4.0)


def test_grid_run_rate_counts_only_the_drained_records() -> None:
    assert run(1, 1, drain_s=3.0).records_per_s == 30_000.0


def test_summarise_grid_takes_the_median_per_point() -> None:
    rows = summarise_grid([run(2, 1, 3.0), run(2, 1, 9.0), run(2, 1, 4.5)])
    assert (rows[0]["records_per_s"], rows[0]["runs"]) == (20_000, [30_000, 10_000, 20_000])


def test_summarise_grid_one_row_per_layout_updaters_shards() -> None:
    rows = summarise_grid([run(1, 1, 3.0), run(1, 2, 3.0), run(1, 1, 3.0, layout="local"), run(4, 1, 3.0)])
    assert [(r["layout"], r["updaters"], r["shards"]) for r in rows] == [
        ("head", 1, 1),
        ("head", 1, 4),
        ("head", 2, 1),
        ("local", 1, 1),
    ]


def test_summarise_grid_reports_shared_shards_only_for_several_updaters() -> None:
    rows = summarise_grid([run(1, 1, 3.0)])
    assert rows[0]["shared_shards"] is None


def test_grid_points_run_local_only_with_one_updater() -> None:
    points = GridOptions(shards=(1, 2), updaters=(1, 2), layouts=("local", "head")).points()
    assert points == [
        ("local", 1, 1),
        ("local", 1, 2),
        ("head", 1, 1),
        ("head", 1, 2),
        ("head", 2, 1),
        ("head", 2, 2),
    ]


def test_grid_options_refuse_an_unknown_layout() -> None:
    with pytest.raises(ValueError, match="layouts"):
        GridOptions(layouts=("cluster",))


def test_grid_options_refuse_zero_shards() -> None:
    with pytest.raises(ValueError, match="invalid grid options"):
        GridOptions(shards=(0,))


def test_reported_rate_reads_the_updaters_done_line() -> None:
    text = (
        "train: consuming ...\n"
        "train: done: 300,000 events, 1,240,830 pairs, 0 dead-lettered in 20.1 s; "
        "from first to last record 11.36 s: 26,417 records/s, 109,264 pairs/s\n"
    )
    assert reported_rate(text) == 26_417.0


def test_reported_rate_is_zero_without_a_done_line() -> None:
    assert reported_rate("train: consuming ...\n") == 0.0


def test_merge_grids_summarises_the_runs_of_both() -> None:
    def grid(drain_s: float) -> dict:
        saved = {**run(1, 1, drain_s).__dict__, "per_updater": [90_000], "records_per_s": 0.0}
        return {"events": 100_000, "runs": [saved], "summary": [], "freshness": []}

    merged = merge_grids([grid(3.0), grid(9.0), grid(4.5)])
    assert (merged["summary"][0]["records_per_s"], len(merged["runs"])) == (20_000, 3)
