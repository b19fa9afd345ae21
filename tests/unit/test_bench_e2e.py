"""Pure helpers of the end-to-end benchmark."""

from __future__ import annotations

import pytest

from recsim_stream.bench_e2e import E2EOptions, metric_totals, percentile, written_to_served


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


def test_options_refuse_a_negative_rate() -> None:
    with pytest.raises(ValueError, match="rate=-1"):
        E2EOptions(rate=-1.0)


def test_written_to_served_is_the_delay_from_a_snapshot_write_to_the_api_serving_it() -> None:
    assert written_to_served([(10.0, 10.5), (20.0, 21.5), (30.0, 31.0)]) == {
        "written_to_served_p50_s": 1.0,
        "written_to_served_p95_s": 1.45,
    }
