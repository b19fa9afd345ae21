"""Publishing a stream of events and item metadata into Kafka, paced and with progress.

Shared by ``simulate`` and ``replay``: both turn an iterator of ``ItemMeta | ItemDeleted | Event``
into records (an ``ItemDeleted`` into a tombstone on the items topic), and report at the end the
events/s they achieved into the broker (flush included).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from recsim_stream.events import Event, EventKind, ItemDeleted, ItemMeta
from recsim_stream.kafka_io import RecordProducer
from recsim_stream.metrics import SimulatorMetrics
from recsim_stream.progress import Progress


@dataclass(frozen=True)
class PublishReport:
    events: int
    items: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def line(self, label: str, bootstrap: str) -> str:
        return (
            f"{label}: sent {self.events:,} events and {self.items:,} item records to {bootstrap} "
            f"in {self.seconds:.2f} s: {self.events_per_s:,.0f} events/s (flush included)"
        )


# Metrics are counted locally and added at most this often: a labelled Prometheus counter costs
# about as much per event as the rest of the simulator's Python work.
_METRICS_EVERY_S = 0.5


def publish(
    records: Iterable[ItemMeta | ItemDeleted | Event],
    producer: RecordProducer,
    progress: Progress,
    before_event: Callable[[Event], None] = lambda _e: None,
    metrics: SimulatorMetrics | None = None,
    deadline: float = float("inf"),
) -> PublishReport:
    """Send every record; ``before_event`` paces (it may sleep). Stops at the monotonic ``deadline``."""
    events = items = 0
    unreported: Counter[EventKind] = Counter()
    unreported_items = 0
    started = report_at = time.monotonic()
    for record in records:
        if isinstance(record, ItemMeta):
            producer.send_item(record)
            items += 1
            unreported_items += 1
            continue
        if isinstance(record, ItemDeleted):
            producer.send_item_deletion(record.item_id)
            items += 1
            continue
        before_event(record)
        producer.send_event(record)
        events += 1
        unreported[record.kind] += 1
        if metrics is not None and time.monotonic() >= report_at:
            _report(metrics, unreported, unreported_items)
            unreported_items = 0
            report_at = time.monotonic() + _METRICS_EVERY_S
        if events % 1024 == 0:
            progress.update(1024)
            if time.monotonic() >= deadline:
                break
    progress.update(events % 1024)
    producer.flush()
    if metrics is not None:
        _report(metrics, unreported, unreported_items)
    progress.finish()
    return PublishReport(events, items, time.monotonic() - started)


def _report(metrics: SimulatorMetrics, kinds: Counter[EventKind], items: int) -> None:
    """Add the counts since the last report to the metrics and reset ``kinds``."""
    for kind, count in kinds.items():
        metrics.events_produced.labels(kind.value).inc(count)
    kinds.clear()
    if items:
        metrics.items_listed.inc(items)
