"""Every metric the metric groups register follows the naming conventions, checked mechanically so that
a new metric must follow them too: ``recsim_<thing>_<unit>[_total]``, base units, small label sets."""

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from recsim_stream import metrics

GROUPS = (
    metrics.UpdaterMetrics,
    metrics.SnapshotMetrics,
    metrics.ApiMetrics,
    metrics.SimulatorMetrics,
    metrics.KafkaMetrics,
)
SOURCE = Path(metrics.__file__).read_text()
TIME_WORDS = {"duration", "latency", "age", "time", "timestamp", "freshness", "delay", "seconds"}
NON_BASE_UNITS = {"ms", "millis", "milliseconds", "minutes", "hours", "kb", "mb", "gb", "percent"}
ID_LIKE = re.compile(r"user|item|session|(^|_)id$")


def _registered() -> list[MetricWrapperBase]:
    """The metric objects of all the groups, built on one registry (which also refuses duplicates)."""
    registry = CollectorRegistry()
    found = []
    for group in GROUPS:
        found += [m for m in vars(group(registry)).values() if isinstance(m, MetricWrapperBase)]
    return found


REGISTERED = _registered()
BY_NAME = {m._name: m for m in REGISTERED}


def test_the_groups_register_distinct_names():
    assert len(BY_NAME) == len(REGISTERED)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_name_is_recsim_snake_case(name):
    assert re.fullmatch(r"recsim_[a-z][a-z0-9_]*[a-z0-9]", name), name


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_counters_and_only_counters_end_in_total(name):
    metric = BY_NAME[name]
    if metric._type == "counter":
        # prometheus_client appends _total on the wire anyway; spelling it out keeps the source greppable.
        assert f'"{name}_total"' in SOURCE
    else:
        assert not name.endswith("_total")


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_durations_and_times_are_in_seconds(name):
    words = set(name.split("_"))
    if words & TIME_WORDS or BY_NAME[name]._type == "histogram":
        assert name.endswith("_seconds"), name


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_units_are_base_units(name):
    assert set(name.split("_")) & NON_BASE_UNITS == set()


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_no_label_is_an_id(name):
    assert [label for label in BY_NAME[name]._labelnames if ID_LIKE.search(label)] == []


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_labels_come_from_the_allowed_set(name):
    assert set(BY_NAME[name]._labelnames) <= metrics.LABELS


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_metric_has_help_text(name):
    assert BY_NAME[name]._documentation.strip() != ""


def test_every_dead_letter_reason_is_exported_at_zero_before_the_first_one():
    registry = CollectorRegistry()
    metrics.UpdaterMetrics(registry)
    value = registry.get_sample_value("recsim_events_dead_lettered_total", {"reason": "not_msgpack"})
    assert value == 0.0


def test_a_registered_kafka_client_is_connected_with_its_retries_at_zero():
    registry = CollectorRegistry()
    metrics.KafkaMetrics(registry).register("events_consumer")
    connected = registry.get_sample_value("recsim_kafka_connected", {"client": "events_consumer"})
    retries = registry.get_sample_value(
        "recsim_kafka_retries_total", {"client": "events_consumer", "operation": "commit"}
    )
    assert (connected, retries) == (1.0, 0.0)


def test_snapshot_load_refusals_are_exported_at_zero_before_the_first_one():
    registry = CollectorRegistry()
    metrics.ApiMetrics(registry)
    value = registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "recall"})
    assert value == 0.0
