"""The cluster on paper: rates, extrapolation, the cost model's arithmetic, the sizing, tables."""

from __future__ import annotations

import math

import pytest

from recsim_stream.sizing import (
    CostModel,
    Target,
    extrapolate,
    growth_exponent,
    rates,
    size_cluster,
    updater_efficiency,
)


def model(**changes: object) -> CostModel:
    values = {
        "decode_events_per_s": 200_000.0,
        "sessions_events_per_s": 400_000.0,
        "pairs_events_per_s": 500_000.0,
        "pairs_per_event": 4.0,
        "sgns_pairs_per_s": 800_000.0,
        "shard_bytes_per_item": 600.0,
        "updater_bytes_per_item": 250.0,
        "snapshot_bytes_per_item": 800.0,
        "index_bytes_per_item": 700.0,
        "snapshot_write": ((100_000, 1.0), (1_000_000, 10.0)),
        "index_build": ((100_000, 10.0), (1_000_000, 100.0)),
        "search": ((100_000, 2000.0), (1_000_000, 1000.0)),
    }
    values.update(changes)
    return CostModel(**values)


def test_rates_divide_the_count_by_each_run() -> None:
    assert rates(1000, [0.5, 2.0]) == [2000.0, 500.0]


def test_growth_exponent_of_linear_points_is_one() -> None:
    assert growth_exponent((100_000, 2.0), (1_000_000, 20.0)) == pytest.approx(1.0)


def test_growth_exponent_of_quadratic_points_is_two() -> None:
    assert growth_exponent((10, 1.0), (100, 100.0)) == pytest.approx(2.0)


def test_growth_exponent_refuses_points_out_of_order() -> None:
    with pytest.raises(ValueError, match="0 < n1 < n2"):
        growth_exponent((1_000_000, 20.0), (100_000, 2.0))


def test_extrapolate_is_linear_from_the_larger_point_when_shown_linear() -> None:
    assert extrapolate((100_000, 2.0), (1_000_000, 21.0), 10_000_000) == pytest.approx(210.0)


def test_extrapolate_follows_the_power_law_when_superlinear() -> None:
    # per-million cost doubles from 100k to 1M: exponent 1 + log10(2)
    expected = 40.0 * 10 ** (1 + math.log10(2))
    assert extrapolate((100_000, 2.0), (1_000_000, 40.0), 10_000_000) == pytest.approx(expected)


def test_extrapolate_never_goes_below_linear() -> None:
    assert extrapolate((100_000, 4.0), (1_000_000, 20.0), 10_000_000) == pytest.approx(200.0)


def test_core_seconds_per_event_per_stage() -> None:
    assert model().core_seconds_per_event() == {
        "decode": 1 / 200_000,
        "sessions": 1 / 400_000,
        "pairs": 1 / 500_000,
        "sgns": 4.0 / 800_000,
    }


def test_updater_efficiency_is_measured_over_in_process_rate() -> None:
    # in process: 5 + 2.5 + 2 + 5 = 14.5 us per event on one core
    assert updater_efficiency(model(), 20_000.0) == pytest.approx(0.29)


def test_seconds_at_uses_the_two_largest_sizes() -> None:
    assert model().seconds_at("index_build", 10_000_000) == pytest.approx(1000.0)


def test_seconds_at_one_size_is_linear() -> None:
    assert model(snapshot_write=((1_000_000, 10.0),)).seconds_at("snapshot_write", 5_000_000) == 50.0


def test_size_cluster_cores_per_stage_at_half_utilisation() -> None:
    sizing = size_cluster(model(), Target(events_per_s=100_000, utilisation=0.5))
    assert sizing.cores == {"decode": 1.0, "sessions": 0.5, "pairs": 0.4, "sgns": 1.0}


def test_size_cluster_updaters_round_up_the_total_cores() -> None:
    assert size_cluster(model(), Target(events_per_s=100_000, utilisation=0.5)).updaters == 3


def test_size_cluster_ray_efficiency_scales_the_cores() -> None:
    sizing = size_cluster(model(), Target(events_per_s=100_000, utilisation=0.5, ray_efficiency=0.5))
    assert sizing.cores["decode"] == 2.0


def test_size_cluster_partitions_per_updater() -> None:
    sizing = size_cluster(model(), Target(events_per_s=100_000, utilisation=0.5, partitions_per_updater=4))
    assert sizing.partitions == 12


def test_size_cluster_shard_memory_with_headroom_and_nodes() -> None:
    target = Target(items=1024**3 // 600, memory_headroom=2.0, node_memory_gb=0.5)
    sizing = size_cluster(model(), target)
    assert (sizing.shard_memory_gb, sizing.shard_nodes) == (2.0, 4)


def test_size_cluster_index_builders_cover_one_rebuild_per_interval() -> None:
    # 10M rows: 100 s write + 1000 s build, one full rebuild every 500 s
    sizing = size_cluster(model(), Target(items=10_000_000, full_rebuild_every_s=500))
    assert (sizing.snapshot_write_s, sizing.index_build_s, sizing.index_builders) == (100.0, 1000.0, 3)


def test_searches_per_s_follow_the_power_law_down() -> None:
    assert model().searches_per_s_at(10_000_000) == pytest.approx(500.0)


def test_searches_per_s_never_rise_with_rows() -> None:
    rising = model(search=((100_000, 1000.0), (1_000_000, 2000.0)))
    assert rising.searches_per_s_at(10_000_000) == 2000.0


def test_size_cluster_replicas_from_search_rate_with_a_minimum() -> None:
    assert size_cluster(model(), Target(items=1_000_000, queries_per_s=100, utilisation=0.5)).replicas == 2
    assert size_cluster(model(), Target(items=1_000_000, queries_per_s=5000, utilisation=0.5)).replicas == 10


def test_size_cluster_replica_memory_is_snapshot_plus_index() -> None:
    sizing = size_cluster(model(), Target(items=1024**3 // 1500))
    assert sizing.replica_memory_gb == 1.0


def test_size_cluster_kafka_bandwidth() -> None:
    assert size_cluster(model(), Target(events_per_s=100_000, bytes_per_event=75)).kafka_mb_per_s == 7.5


def test_target_refuses_utilisation_above_one() -> None:
    with pytest.raises(ValueError, match="utilisation"):
        Target(utilisation=1.5)


def test_target_refuses_zero_events() -> None:
    with pytest.raises(ValueError, match="events_per_s"):
        Target(events_per_s=0)
