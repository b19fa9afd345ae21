"""Real data sets to canonical events and item metadata (REES46 raw, MovieLens as RecBole files).

Each loader reproduces the reference conversions in ``data/*/canonical/`` exactly (tests compare whole
files): events come out in stable event-time order (ties keep file order), items in the order the
reference lists them. ``open_dataset`` detects the format of a file or folder; ``convert`` writes the
canonical CSV pair. Readers stream where the source allows it, so a month of REES46 does not need to
fit in memory.
"""

from __future__ import annotations

import calendar
import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from recsim_stream import canonical_csv
from recsim_stream.canonical_csv import CsvStats
from recsim_stream.events import Event, EventKind, ItemMeta

REES46_COLUMNS = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
_REES46_KINDS = {"view": EventKind.CLICK, "cart": EventKind.CART, "purchase": EventKind.PURCHASE}
_REES46_SKIPPED_KINDS = ("remove_from_cart",)  # no counterpart in the canonical kinds


class DatasetError(ValueError):
    """A source file is not what its format promises; names the file and line."""


class DataFormat(StrEnum):
    CANONICAL = "canonical"
    REES46 = "rees46"
    MOVIELENS = "movielens"  # RecBole atomic files: <name>.inter and <name>.item


def _check(ok: bool, errors: str, stats: CsvStats, reason: str, where: str, message: str) -> bool:
    """True if the row is fine; otherwise raise or count it, by ``errors``."""
    if ok:
        return True
    if errors == "raise":
        raise DatasetError(f"{where}: {message}")
    stats.skipped[reason] += 1
    return False


def _rees46_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open: {exc}") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None or tuple(header) != REES46_COLUMNS:
                raise DatasetError(
                    f"{path}:1: expected REES46 header {','.join(REES46_COLUMNS)}, got {header}"
                )
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: not UTF-8 text: {exc}") from exc
        except csv.Error as exc:  # e.g. a field over the csv module's size limit
            raise DatasetError(f"{path}:{reader.line_num}: {exc}") from exc


class _UtcParser:
    """``YYYY-MM-DD HH:MM:SS UTC`` to unix seconds; caches the day, as rows come sorted by time."""

    def __init__(self) -> None:
        self._day = ""
        self._day_start = 0

    def __call__(self, text: str) -> int:
        if len(text) != 23 or not text.endswith(" UTC") or text[10] != " ":
            raise ValueError(f"expected 'YYYY-MM-DD HH:MM:SS UTC', got {text[:40]!r}")
        day = text[:10]
        if day != self._day:
            year, month, mday = (int(p) for p in day.split("-"))
            self._day_start = calendar.timegm((year, month, mday, 0, 0, 0))
            self._day = day
        hours, minutes, seconds = int(text[11:13]), int(text[14:16]), int(text[17:19])
        if hours > 23 or minutes > 59 or seconds > 60 or text[13] != ":" or text[16] != ":":
            raise ValueError(f"expected 'YYYY-MM-DD HH:MM:SS UTC', got {text[:40]!r}")
        return self._day_start + hours * 3600 + minutes * 60 + seconds


def read_rees46_events(
    path: str | Path, errors: str = "raise", stats: CsvStats | None = None
) -> Iterator[Event]:
    """view -> click, cart -> cart, purchase -> purchase; remove_from_cart skipped and counted.

    The source is sorted by event_time; rows are streamed in file order, which is the stable order.
    """
    path = Path(path)
    stats = stats if stats is not None else CsvStats()
    parse_time = _UtcParser()
    previous_ts = float("-inf")
    for line, row in _rees46_rows(path):
        where = f"{path}:{line}"
        if not _check(
            len(row) == len(REES46_COLUMNS),
            errors,
            stats,
            "bad_row",
            where,
            f"expected 9 columns, got {len(row)}",
        ):
            continue
        event_time, event_type, product, _, _, _, _, user, session = row
        if event_type in _REES46_SKIPPED_KINDS:
            stats.skipped[event_type] += 1
            continue
        kind = _REES46_KINDS.get(event_type)
        if not _check(
            kind is not None, errors, stats, "unknown_kind", where, f"unknown event_type {event_type[:40]!r}"
        ):
            continue
        try:
            ts = float(parse_time(event_time))
        except ValueError as exc:
            _check(False, errors, stats, "bad_time", where, str(exc))
            continue
        if not _check(
            bool(user and product),
            errors,
            stats,
            "id_empty",
            where,
            "user_id and product_id must not be empty",
        ):
            continue
        if ts < previous_ts:
            raise DatasetError(
                f"{where}: expected rows sorted by event_time, got {event_time} after an event at {previous_ts}"
            )
        previous_ts = ts
        stats.rows += 1
        yield Event(user, product, kind, ts, session or None)


def read_rees46_items(path: str | Path) -> list[ItemMeta]:
    """One ItemMeta per product, in order of first appearance, from its first row.

    title = brand + " " + category_code (stripped); category = category_code, or category_id when the code
    is empty. Metadata is constant per item in the extract; in longer REES46 files prices change, and the
    first row wins.
    """
    path = Path(path)
    items: dict[str, ItemMeta] = {}
    for line, row in _rees46_rows(path):
        if len(row) != len(REES46_COLUMNS) or row[2] in items or not row[2]:
            continue
        _, _, product, category_id, category_code, brand, price_text, _, _ = row
        try:
            price = float(price_text) if price_text else None
        except ValueError as exc:
            raise DatasetError(f"{path}:{line}: price {price_text[:40]!r} is not a number") from exc
        items[product] = ItemMeta(
            item_id=product,
            title=f"{brand} {category_code}".strip(),
            category=category_code or category_id,
            price=price,
            attributes={"brand": brand} if brand else {},
        )
    return list(items.values())


def _recbole_table(path: Path) -> tuple[dict[str, int], list[list[str]], list[int]]:
    """A RecBole atomic file: tab-separated, header ``name:type``. Returns column index by name, rows and
    the line number of each row."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read as UTF-8 text: {exc}") from exc
    if not lines:
        raise DatasetError(f"{path}:1: expected a RecBole header (name:type columns), got an empty file")
    header = lines[0].split("\t")
    columns = {label.split(":", 1)[0]: i for i, label in enumerate(header)}
    rows, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        row = line.split("\t")
        if len(row) != len(header):
            raise DatasetError(
                f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(row)}"
            )
        rows.append(row)
        numbers.append(number)
    return columns, rows, numbers


def _require_columns(path: Path, columns: dict[str, int], names: Iterable[str]) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise DatasetError(f"{path}:1: expected columns {', '.join(missing)}, got {', '.join(columns)}")


def read_movielens_events(path: str | Path) -> Iterator[Event]:
    """Every rating -> click, no session id, sorted by timestamp (ties keep file order)."""
    path = Path(path)
    columns, rows, numbers = _recbole_table(path)
    _require_columns(path, columns, ("user_id", "item_id", "timestamp"))
    u, i, t = columns["user_id"], columns["item_id"], columns["timestamp"]
    ts = np.empty(len(rows))
    for k, (row, number) in enumerate(zip(rows, numbers, strict=True)):
        try:
            value = float(row[t])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DatasetError(f"{path}:{number}: expected a finite number as timestamp, got {row[t][:40]!r}")
        if not (row[u] and row[i]):
            raise DatasetError(f"{path}:{number}: user_id and item_id must not be empty")
        ts[k] = value
    for k in np.argsort(ts, kind="stable").tolist():
        row = rows[k]
        yield Event(row[u], row[i], EventKind.CLICK, float(ts[k]))


def read_movielens_items(path: str | Path) -> list[ItemMeta]:
    """title "Title (Year)", category = genres joined by "|", no price; in file order."""
    path = Path(path)
    columns, rows, _ = _recbole_table(path)
    _require_columns(path, columns, ("item_id", "movie_title", "release_year", "class"))
    i, title, year, genres = (columns[n] for n in ("item_id", "movie_title", "release_year", "class"))
    items = []
    for row in rows:
        items.append(
            ItemMeta(
                item_id=row[i],
                title=f"{row[title]} ({row[year]})" if row[year] else row[title],
                category="|".join(row[genres].split()),
                attributes={"year": row[year]} if row[year] else {},
            )
        )
    return items


def _in_ts_order(events: Iterable[Event], path: Path) -> Iterator[Event]:
    previous = float("-inf")
    for n, event in enumerate(events, start=1):
        if event.ts < previous:
            raise DatasetError(
                f"{path}: event {n} (line {n + 1}): expected rows in ts order, got {event.ts} after {previous}"
            )
        previous = event.ts
        yield event


@dataclass(frozen=True)
class Dataset:
    """A detected source: ``events()`` and ``items()`` can each be read any number of times."""

    format: DataFormat
    events_path: Path
    items_path: Path | None

    def events(self, errors: str = "raise", stats: CsvStats | None = None) -> Iterator[Event]:
        """Events in stable event-time order (what replay needs)."""
        if self.format is DataFormat.CANONICAL:
            return _in_ts_order(canonical_csv.read_events(self.events_path, errors, stats), self.events_path)
        if self.format is DataFormat.REES46:
            return read_rees46_events(self.events_path, errors, stats)
        return read_movielens_events(self.events_path)

    def items(self) -> list[ItemMeta]:
        if self.format is DataFormat.REES46:
            return read_rees46_items(self.events_path)
        if self.items_path is None:
            return []
        if self.format is DataFormat.CANONICAL:
            return list(canonical_csv.read_items(self.items_path))
        return read_movielens_items(self.items_path)


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc


def _from_file(path: Path) -> Dataset:
    header = _first_line(path)
    if header == ",".join(canonical_csv.EVENT_COLUMNS):
        items = path.with_name("items.csv")
        return Dataset(DataFormat.CANONICAL, path, items if items.is_file() else None)
    if header == ",".join(REES46_COLUMNS):
        return Dataset(DataFormat.REES46, path, None)
    if path.suffix == ".inter" or header.startswith("user_id:"):
        items = path.with_suffix(".item")
        return Dataset(DataFormat.MOVIELENS, path, items if items.is_file() else None)
    raise DatasetError(
        f"{path}:1: expected a canonical events CSV ({','.join(canonical_csv.EVENT_COLUMNS)}), "
        f"a REES46 events CSV ({','.join(REES46_COLUMNS)}) or a RecBole .inter file; got {header[:120]!r}"
    )


def open_dataset(path: str | Path) -> Dataset:
    """Detect the format of a file, or of a folder holding events.csv or one RecBole ``*.inter`` file."""
    path = Path(path)
    if path.is_file():
        return _from_file(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: expected a data file or folder, found nothing there")
    if (path / "events.csv").is_file():
        return _from_file(path / "events.csv")
    inter = sorted(path.glob("*.inter"))
    if len(inter) == 1:
        return _from_file(inter[0])
    raise DatasetError(
        f"{path}: expected events.csv or exactly one RecBole *.inter file in the folder, "
        f"found {sorted(p.name for p in path.iterdir())[:10]}"
    )


def detect_format(path: str | Path) -> DataFormat:
    return open_dataset(path).format


@dataclass(frozen=True)
class ConvertResult:
    format: DataFormat
    events: int
    items: int
    skipped: dict[str, int]


def convert(source_path: str | Path, out_dir: str | Path, errors: str = "raise") -> ConvertResult:
    """Write ``events.csv`` and ``items.csv`` in canonical form into ``out_dir`` (created if missing)."""
    dataset = open_dataset(source_path)
    out = Path(out_dir)
    targets = {out.resolve() / "events.csv", out.resolve() / "items.csv"}
    sources = {p.resolve() for p in (dataset.events_path, dataset.items_path) if p is not None}
    if targets & sources:
        raise DatasetError(f"{out}: expected an output folder other than the source's, got the same")
    out.mkdir(parents=True, exist_ok=True)
    stats = CsvStats()
    # Written under temporary names and renamed, so a failed conversion leaves no half file behind.
    events = canonical_csv.write_events(out / "events.csv.tmp", dataset.events(errors, stats))
    items = canonical_csv.write_items(out / "items.csv.tmp", dataset.items())
    (out / "events.csv.tmp").replace(out / "events.csv")
    (out / "items.csv.tmp").replace(out / "items.csv")
    return ConvertResult(dataset.format, events, items, dict(stats.skipped))
