"""Pure helpers of the end-to-end benchmark."""

from __future__ import annotations

import os

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from recsim_stream.bench_e2e import (
    E2EOptions,
    _Produced,
    _split_cpus,
    catalogue_served,
    metric_totals,
    percentile,
    server_timing_ms,
    slow_query_shares,
    snapshot_pauses,
    steady_state,
    summarise,
    written_to_served,
)
from recsim_stream.metrics import SnapshotMetrics


def test_percentile_interpolates_between_samples() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5


def test_percentile_of_one_sample_is_that_sample() -> None:
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_metric_totals_sums_over_labels() -> None:
    text = (
        "# TYPE recsim_events_dead_lettered_total counter\n"
        'recsim_events_dead_lettered_total{reason="decode"} 2.0\n'
        'recsim_events_dead_lettered_total{reason="late"} 3.0\n'
    )
    assert metric_totals(text)["recsim_events_dead_lettered_total"] == 5.0
    assert metric_totals(text)["recsim_events_dead_lettered_total{reason=late}"] == 3.0


def test_snapshot_pauses_per_kind_from_the_updaters_histogram() -> None:
    registry = CollectorRegistry()
    metrics = SnapshotMetrics(registry)
    for kind, seconds in (("full", 4.0), ("full", 2.0), ("delta", 0.1)):
        metrics.pause_seconds.labels(kind).observe(seconds)
    pauses = snapshot_pauses(metric_totals(generate_latest(registry).decode()))
    assert pauses == {
        "full": {"count": 2, "sum_s": 6.0, "mean_s": 3.0},
        "delta": {"count": 1, "sum_s": 0.1, "mean_s": 0.1},
    }


def test_options_refuse_a_negative_rate() -> None:
    with pytest.raises(ValueError, match="rate=-1"):
        E2EOptions(rate=-1.0)


def test_options_refuse_a_negative_wait_for_the_catalogue() -> None:
    with pytest.raises(ValueError, match="catalogue_first_s=-1"):
        E2EOptions(catalogue_first_s=-1.0)


@pytest.mark.parametrize("rate", [-0.1, float("nan"), float("inf")])
def test_options_refuse_a_deletion_rate_that_is_negative_or_not_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="deletions_per_s="):
        E2EOptions(deletions_per_s=rate)


@pytest.mark.parametrize("count", [-1, 5_001])
def test_options_refuse_a_bulk_deletion_beyond_the_catalogue(count: int) -> None:
    with pytest.raises(ValueError, match="bulk_deletions="):
        E2EOptions(items=5_000, bulk_deletions=count)


@pytest.mark.parametrize(
    ("served", "steady"),
    [
        ({"items": 1_000_000, "delta_rows": 5, "index_kind": "hnsw"}, True),
        ({"items": 1_000_000, "delta_rows": 5, "index_kind": "flat"}, False),  # approximate build due
        ({"items": 1_000_000, "delta_rows": 999_990, "index_kind": "hnsw"}, False),  # mostly a delta
        ({"items": 999_999, "delta_rows": 0, "index_kind": "hnsw"}, False),  # still listing
        ({}, False),  # nothing served yet
    ],
)
def test_steady_state_is_the_catalogue_served_from_an_approximate_full_snapshot(served, steady) -> None:
    assert steady_state(served, 1_000_000, exact_below=50_000) is steady


def test_a_small_catalogue_is_steady_on_its_exact_index() -> None:
    assert steady_state({"items": 1_000, "delta_rows": 0, "index_kind": "flat"}, 1_000, exact_below=50_000)


@pytest.mark.parametrize("cpus", ["", "x", "0-", "99"])
def test_options_refuse_api_cpus_that_leave_no_cpu_to_either_side(cpus: str) -> None:
    allowed = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    with pytest.raises(ValueError, match="api_cpus"):
        E2EOptions(api_cpus=cpus or allowed)


def test_api_cpus_split_the_cpus_between_the_api_and_the_rest() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to split")
    api, others = _split_cpus(str(allowed[-1]))
    assert (api, others) == ({allowed[-1]}, set(allowed[:-1]))


def test_written_to_served_is_the_delay_from_a_snapshot_write_to_the_api_serving_it() -> None:
    assert written_to_served([(10.0, 10.5), (20.0, 21.5), (30.0, 31.0)]) == {
        "written_to_served_p50_s": 1.0,
        "written_to_served_p95_s": 1.45,
    }


def test_catalogue_served_is_the_first_state_holding_the_whole_listing() -> None:
    produced = _Produced(listing_started=100.0, catalogue_listed=110.0)
    served = [[130.0, 1000], (120.0, 400), [125.0, 999]]  # (loaded by the API, items), any order
    assert catalogue_served(produced, 1000, served) == {
        "catalogue_listed_s": 10.0,
        "catalogue_served_s": 30.0,
    }


def test_a_catalogue_never_served_whole_has_no_served_time() -> None:
    produced = _Produced(listing_started=100.0, catalogue_listed=110.0)
    assert catalogue_served(produced, 1000, [(120.0, 400)])["catalogue_served_s"] is None


def test_slow_query_shares_compare_the_client_with_the_api_histogram() -> None:
    text = (
        "# TYPE recsim_query_duration_seconds histogram\n"
        'recsim_query_duration_seconds_bucket{endpoint="/recommend",le="0.01",status="200"} 6.0\n'
        'recsim_query_duration_seconds_bucket{endpoint="/recommend",le="0.05",status="200"} 9.0\n'
        'recsim_query_duration_seconds_bucket{endpoint="/recommend",le="+Inf",status="200"} 10.0\n'
        'recsim_query_duration_seconds_bucket{endpoint="/items/{item_id:path}",le="0.01",status="200"} 0.0\n'
        'recsim_query_duration_seconds_bucket{endpoint="/items/{item_id:path}",le="+Inf",status="200"} 50.0\n'
    )
    assert slow_query_shares(text, [5.0, 20.0, 60.0, 8.0]) == {
        "query_share_over_10ms": 0.5,
        "server_query_share_over_10ms": 0.4,
        "query_share_over_50ms": 0.25,
        "server_query_share_over_50ms": 0.1,
    }


@pytest.mark.parametrize(
    "header,expected",
    [
        ("app;dur=2.125", 2.125),
        ('db;dur=9, app;desc="query";dur=3.5', 3.5),
        ("app", None),
        ("app;dur=soon", None),
        ("db;dur=1", None),
        (None, None),
    ],
)
def test_server_timing_reads_the_apis_own_duration(header, expected):
    assert server_timing_ms(header) == expected


def test_summary_times_single_and_bulk_deletions_apart() -> None:
    produced = _Produced(
        events=10, deletions=2, bulk_deletions=300, bulk_probed={"b1", "b2"}, started=100.0, ended=160.0
    )
    queried = {
        "queries": [(101.0, "similar", 200, 5.0), (102.0, "recommend", 200, 7.0)],
        "server_ms": [4.0, 6.0],
        "fresh": [],
        "unresolved": {},
        "gone": [("s1", 110.0, 111.0), ("b1", 130.0, 131.5), ("s2", 140.0, 143.0), ("b2", 130.0, 132.5)],
        "deletions_unresolved": {},
        "snapshots": [],
        "served_items": [],
    }
    summary = summarise(produced, 170.0, {}, {}, queried, {}, 1000)
    assert (summary["deletions"], summary["deletions_measured"], summary["deletion_p50_s"]) == (2, 2, 2.0)
    assert (summary["bulk_deletions"], summary["bulk_deletions_measured"]) == (300, 2)
    assert (summary["bulk_deletion_p50_s"], summary["bulk_deletion_max_s"]) == (2.0, 2.5)
    none = summarise(_Produced(started=100.0, ended=160.0), 170.0, {}, {}, {**queried, "gone": []}, {}, 1000)
    assert (none["bulk_deletions_measured"], none["bulk_deletion_p50_s"], none["bulk_deletion_max_s"]) == (
        0,
        None,
        None,
    )
