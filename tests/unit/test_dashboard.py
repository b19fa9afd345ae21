"""The Grafana dashboard is a valid dashboard model wired to the provisioned data source, and every
metric its queries name exists (a renamed metric would otherwise leave a silently empty panel)."""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from recsim_stream import metrics

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "recsim.json").read_text())
DATASOURCES = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
TARGETS = [t for p in PANELS for t in p["targets"]]
GRID_COLUMNS = 24

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects: identifiers that are not functions, keywords, label
    names or range durations."""
    rest = _STRINGS.sub('""', expr)
    for pattern in (_MATCHERS, _RANGES, _GROUPING):
        rest = pattern.sub(" ", rest)
    names = set()
    for match in _IDENTIFIER.finditer(rest):
        followed_by_call = rest[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def _exported() -> dict[str, set[str]]:
    """Series names per metric family the services export: the four groups, the process collector, ``up``."""
    registry = metrics.new_registry()
    families = {f.name: {s.name for s in f.samples} for f in registry.collect()}
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    for group in (
        metrics.UpdaterMetrics,
        metrics.SnapshotMetrics,
        metrics.CheckpointMetrics,
        metrics.KafkaMetrics,
        metrics.ApiMetrics,
        metrics.SimulatorMetrics,
    ):
        for metric in vars(group(registry)).values():
            if isinstance(metric, MetricWrapperBase):
                families[metric._name] = {metric._name + suffix for suffix in suffixes[metric._type]}
    return families | {"up": {"up"}}


FAMILIES = _exported()
EXPORTED = set().union(*FAMILIES.values())


def test_metric_names_skips_functions_labels_ranges_and_strings():
    expr = 'histogram_quantile(0.99, sum by (endpoint, le) (rate(x_bucket{status=~"5.."}[$__rate_interval]))) / on() y'
    assert metric_names(expr) == {"x_bucket", "y"}


def test_dashboard_has_uid_title_and_schema_version():
    assert (DASHBOARD["uid"], DASHBOARD["title"]) == ("recsim-overview", "recsim-stream")
    assert isinstance(DASHBOARD["schemaVersion"], int)


def test_panel_ids_are_unique():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("panel", DASHBOARD["panels"], ids=lambda p: p["title"])
def test_panel_fits_the_grid(panel):
    grid = panel["gridPos"]
    assert all(isinstance(grid[key], int) and grid[key] >= 0 for key in ("h", "w", "x", "y"))
    assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] + grid["w"] <= GRID_COLUMNS


def test_panels_do_not_overlap():
    cells = [
        (p["title"], x, y)
        for p in DASHBOARD["panels"]
        for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
        for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])
    ]
    assert len({(x, y) for _, x, y in cells}) == len(cells)


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p["title"])
def test_panel_uses_the_provisioned_datasource(panel):
    uid = DATASOURCES["datasources"][0]["uid"]
    assert panel["datasource"] == {"type": "prometheus", "uid": uid}
    assert [t["datasource"]["uid"] for t in panel["targets"]] == [uid] * len(panel["targets"])


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p["title"])
def test_panel_has_queries_with_distinct_ref_ids(panel):
    ref_ids = [t["refId"] for t in panel["targets"]]
    assert ref_ids != [] and len(ref_ids) == len(set(ref_ids))
    assert all(t["expr"].strip() for t in panel["targets"])


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p["title"])
def test_panel_sets_a_unit(panel):
    assert panel["fieldConfig"]["defaults"]["unit"] != ""


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t["expr"][:60])
def test_every_metric_in_a_query_is_exported(target):
    assert metric_names(target["expr"]) - EXPORTED == set()


def test_every_recsim_metric_is_on_some_panel():
    used = set().union(*(metric_names(t["expr"]) for t in TARGETS))
    assert [f for f, series in FAMILIES.items() if f.startswith("recsim_") and not series & used] == []


def test_first_row_shows_health_at_a_glance():
    rows = [i for i, p in enumerate(DASHBOARD["panels"]) if p["type"] == "row"]
    first = DASHBOARD["panels"][rows[0] + 1 : rows[1]]
    assert {p["type"] for p in first} == {"stat"}
    used = set().union(*(metric_names(t["expr"]) for p in first for t in p["targets"]))
    assert {
        "recsim_events_consumed_total",
        "recsim_consumer_lag_records",
        "recsim_events_dead_lettered_total",
        "recsim_freshness_seconds_bucket",
        "recsim_query_duration_seconds_bucket",
        "recsim_serving_snapshot_age_seconds",
    } <= used


def test_rows_cover_every_service():
    titles = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert titles == [
        "Health",
        "Updater",
        "Snapshots and index",
        "Query API",
        "Reliability",
        "Simulator",
        "Processes",
    ]


def test_provisioning_loads_dashboards_from_where_compose_mounts_them():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "recsim.yml").read_text())
    compose = yaml.safe_load((GRAFANA.parents[1] / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
