"""``recsim-stream bench e2e`` end to end: its own broker, the updater and the query API as processes.

One short run (15 s at 500 events/s over 500 items, 100 of them deleted at once halfway) shared by
the tests of this module. Its updater publishes one full snapshot and then deltas only, so a deleted
item must leave the API through a delta's removal (a full snapshot would also drop it, hiding a
broken removal)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchRun:
    summary: dict
    stderr: str
    plot: Path


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    plot = tmp_path_factory.mktemp("bench") / "e2e.png"
    argv = [sys.executable, "-m", "recsim_stream.cli", "bench", "e2e", "--json",
            "--duration", "15", "--rate", "500", "--items", "500", "--bulk-deletions", "100",
            "--plot", str(plot)]  # fmt: skip
    deltas_only = {
        **os.environ,
        "RECSIM_SNAPSHOT_FULL_EVERY": "1000000",
        "RECSIM_SNAPSHOT_FULL_AFTER_CHANGED": "0",
    }
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=deltas_only)
    assert done.returncode == 0, f"bench e2e failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return BenchRun(json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, plot)


def test_summary_has_every_figure(bench_run: BenchRun) -> None:
    expected = {
        "events_produced", "events_trained", "dead_lettered", "ingest_events_per_s", "train_pairs_per_s",
        "freshness_p50_s", "freshness_p95_s", "query_p50_ms", "query_p99_ms", "queries",
        "failed_queries", "swaps", "items", "peak_rss_mb", "shard_rows", "rows_expired",
    }  # fmt: skip
    assert expected - bench_run.summary.keys() == set()


def test_no_query_failed(bench_run: BenchRun) -> None:
    assert bench_run.summary["failed_queries"] == 0


def test_queries_ran(bench_run: BenchRun) -> None:
    assert bench_run.summary["queries"] > 0


def test_updater_trained_every_event_produced(bench_run: BenchRun) -> None:
    assert bench_run.summary["events_trained"] == bench_run.summary["events_produced"]


def test_items_deleted_while_the_stream_ran_left_the_api(bench_run: BenchRun) -> None:
    """Deletions at 0.2 a second over 15 s: each deleted item answered 404 within the run."""
    summary = bench_run.summary
    assert summary["deletions_measured"] == summary["deletions"] >= 1
    assert summary["deletions_unresolved"] == 0
    assert 0 < summary["deletion_p95_s"] < 15


def test_items_deleted_at_once_left_the_api(bench_run: BenchRun) -> None:
    """100 of the 500 items deleted at once halfway through: the 50 timed answered 404 within the run
    (and no query failed, though a fifth of the catalogue went: test_no_query_failed)."""
    summary = bench_run.summary
    assert (summary["bulk_deletions"], summary["bulk_deletions_measured"]) == (100, 50)
    assert summary["deletions_unresolved"] == 0
    assert 0 < summary["bulk_deletion_max_s"] < 15


def test_freshness_measured_for_a_new_item(bench_run: BenchRun) -> None:
    assert bench_run.summary["freshness_measured"] >= 1


def test_query_api_swapped_in_snapshots(bench_run: BenchRun) -> None:
    assert bench_run.summary["swaps"] >= 1


def test_plot_written(bench_run: BenchRun) -> None:
    assert bench_run.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_left_running_or_on_disk(bench_run: BenchRun) -> None:
    folder = re.search(r"data (/\S*recsim-bench-e2e-[^/\s]+)/", bench_run.stderr).group(1)
    survivors = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if folder.encode() in cmdline.read_bytes():
                survivors.append(cmdline.parent.name)
        except OSError:
            continue
    assert (survivors, Path(folder).exists()) == ([], False)


def test_the_listed_catalogue_was_served_whole(bench_run: BenchRun) -> None:
    assert bench_run.summary["catalogue_served_s"] is not None
