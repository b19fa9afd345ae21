"""The project's canonical CSV format, used by replay, eval and bench.

events: ``ts,user_id,item_id,event_type,session_id`` (ts in unix seconds; session_id may be empty)
items:  ``item_id,title,category,price`` (every column but item_id may be empty)

A malformed row is either an error naming the file and line (``errors="raise"``, the default) or is
skipped and counted by reason in ``CsvStats`` (``errors="skip"``): never silently dropped.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from recsim_stream.config import EventLimits
from recsim_stream.events import BadEvent, BadReason, Event, EventKind, ItemMeta

EVENT_COLUMNS = ("ts", "user_id", "item_id", "event_type", "session_id")
ITEM_COLUMNS = ("item_id", "title", "category", "price")
_KINDS = {k.value: k for k in EventKind}
_DEFAULT_LIMITS = EventLimits()


class CsvFormatError(ValueError):
    """A canonical CSV file does not have the expected shape; names the file and line."""


@dataclass
class CsvStats:
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows


def _open_rows(path: Path, expected: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise CsvFormatError(f"{path}: cannot open: {exc}") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != expected:
                raise CsvFormatError(f"{path}:1: expected header {','.join(expected)}, got {header}")
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise CsvFormatError(f"{path}: not UTF-8 text: {exc}") from exc
        except csv.Error as exc:
            raise CsvFormatError(f"{path}:{reader.line_num}: {exc}") from exc


def parse_event_row(row: list[str], limits: EventLimits = _DEFAULT_LIMITS) -> Event | BadEvent:
    """One CSV row to an Event, or a BadEvent saying why not."""
    if len(row) != len(EVENT_COLUMNS):
        return BadEvent(BadReason.MISSING_FIELD, f"expected {len(EVENT_COLUMNS)} columns, got {len(row)}")
    ts_text, user, item, kind_text, session = row
    try:
        ts = float(ts_text)
    except ValueError:
        return BadEvent(BadReason.WRONG_TYPE, f"ts {ts_text[:40]!r} is not a number")
    if not (math.isfinite(ts) and limits.min_ts <= ts <= limits.max_ts):
        return BadEvent(BadReason.TS_OUT_OF_RANGE, f"ts {ts_text[:40]!r} out of range")
    kind = _KINDS.get(kind_text)
    if kind is None:
        return BadEvent(
            BadReason.UNKNOWN_KIND, f"event_type {kind_text[:40]!r} is not click, cart or purchase"
        )
    for name, value in (("user_id", user), ("item_id", item), ("session_id", session)):
        if len(value.encode("utf-8")) > limits.max_id_bytes:
            return BadEvent(BadReason.ID_TOO_LONG, f"{name} is longer than {limits.max_id_bytes} bytes")
        if "\x00" in value:  # as the record decoder (events.py): snapshots could not keep it
            return BadEvent(BadReason.BAD_VALUE, f"{name} contains a NUL character")
    if not user or not item:
        return BadEvent(BadReason.ID_EMPTY, "user_id and item_id must not be empty")
    return Event(user, item, kind, ts, session or None)


def read_events(path: str | Path, errors: str = "raise", stats: CsvStats | None = None) -> Iterator[Event]:
    """Yield the events of a canonical events CSV, in file order."""
    path = Path(path)
    stats = stats if stats is not None else CsvStats()
    for line, row in _open_rows(path, EVENT_COLUMNS):
        parsed = parse_event_row(row)
        if isinstance(parsed, BadEvent):
            if errors == "raise":
                raise CsvFormatError(f"{path}:{line}: {parsed.reason.value}: {parsed.detail}")
            stats.skipped[parsed.reason.value] += 1
            continue
        stats.rows += 1
        yield parsed


def read_items(path: str | Path, errors: str = "raise", stats: CsvStats | None = None) -> Iterator[ItemMeta]:
    """Yield the item metadata of a canonical items CSV."""
    path = Path(path)
    stats = stats if stats is not None else CsvStats()
    for line, row in _open_rows(path, ITEM_COLUMNS):
        problem = None
        price = None
        if len(row) != len(ITEM_COLUMNS):
            problem = f"expected {len(ITEM_COLUMNS)} columns, got {len(row)}"
        elif not row[0]:
            problem = "item_id is empty"
        elif "\x00" in row[0]:
            problem = "item_id contains a NUL character"
        elif row[3]:
            try:
                price = float(row[3])
            except ValueError:
                problem = f"price {row[3][:40]!r} is not a number"
            else:
                if not (math.isfinite(price) and price >= 0):
                    problem = f"price {row[3][:40]!r} must be finite and >= 0"
        if problem:
            if errors == "raise":
                raise CsvFormatError(f"{path}:{line}: {problem}")
            stats.skipped["bad_row"] += 1
            continue
        stats.rows += 1
        yield ItemMeta(row[0], row[1], row[2], price)


def _format_ts(ts: float) -> str:
    return str(int(ts)) if float(ts).is_integer() else repr(float(ts))


class _Writer:
    """csv rows with "\n" line ends, like the reference files. csv quotes a field only when it holds
    a character of the line terminator, so a field with a bare "\r" would go out unquoted and split the
    row when read back: such rows are written fully quoted."""

    def __init__(self, handle) -> None:
        self._plain = csv.writer(handle, lineterminator="\n")
        self._quoted = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: Iterable[str]) -> None:
        row = list(row)
        (self._quoted if any("\r" in field for field in row) else self._plain).writerow(row)


def write_events(path: str | Path, events: Iterable[Event]) -> int:
    """Write events in canonical form; returns the number of rows."""
    count = 0
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = _Writer(handle)
        writer.writerow(EVENT_COLUMNS)
        for e in events:
            writer.writerow((_format_ts(e.ts), e.user_id, e.item_id, e.kind.value, e.session_id or ""))
            count += 1
    return count


def _format_price(price: float | None) -> str:
    return "" if price is None else f"{price:.2f}"


def write_items(path: str | Path, items: Iterable[ItemMeta]) -> int:
    """Write item metadata in canonical form; returns the number of rows."""
    count = 0
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = _Writer(handle)
        writer.writerow(ITEM_COLUMNS)
        for item in items:
            writer.writerow((item.item_id, item.title, item.category, _format_price(item.price)))
            count += 1
    return count
