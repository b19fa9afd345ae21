"""Fuzz the file readers a user points the tools at: the canonical CSV (canonical_csv.py) and the
REES46 / MovieLens (RecBole) readers and format detection of datasets.py.

The first byte picks the reader, the rest is the file. Invariant: a reader returns well-typed rows or
raises CsvFormatError / DatasetError whose message names the file; nothing else escapes (no
UnicodeDecodeError, csv.Error, IndexError, ...).

    .venv/bin/python fuzz/fuzz_csv.py var/fuzz/csv/corpus fuzz/seeds/csv -max_total_time=60
"""

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["recsim_stream"]):
    from recsim_stream import canonical_csv, datasets
    from recsim_stream.canonical_csv import CsvFormatError, CsvStats
    from recsim_stream.datasets import DatasetError
    from recsim_stream.events import Event, ItemMeta

ROOT = Path(tempfile.mkdtemp(prefix="recsim-fuzz-csv-"))


def _skipping(read):
    """``read`` in skip mode, checking that it counts every row it returns."""

    def run(path: Path) -> list:
        stats = CsvStats()
        rows = list(read(path, errors="skip", stats=stats))
        assert stats.rows == len(rows), (stats, len(rows))
        return rows

    return run


def _detected(path: Path) -> list:
    dataset = datasets.open_dataset(path)
    return list(dataset.events(errors="skip")) + dataset.items()


# selector -> (file name, reader); the file name matters to format detection.
READERS = [
    ("events.csv", lambda p: list(canonical_csv.read_events(p))),
    ("events.csv", _skipping(canonical_csv.read_events)),
    ("items.csv", lambda p: list(canonical_csv.read_items(p))),
    ("items.csv", _skipping(canonical_csv.read_items)),
    ("events.csv", lambda p: list(datasets.read_rees46_events(p))),
    ("events.csv", _skipping(datasets.read_rees46_events)),
    ("events.csv", datasets.read_rees46_items),
    ("data.inter", lambda p: list(datasets.read_movielens_events(p))),
    ("data.item", datasets.read_movielens_items),
    ("data.inter", _detected),
    ("events.csv", _detected),
]


def _check_row(row: object) -> None:
    if isinstance(row, Event):
        assert all(isinstance(v, str) and v for v in (row.user_id, row.item_id)), row
        assert isinstance(row.ts, float), row
    else:
        assert isinstance(row, ItemMeta), row
        assert isinstance(row.item_id, str) and isinstance(row.title, str), row
        assert row.price is None or isinstance(row.price, float), row


def test_one_input(data: bytes) -> None:
    if not data:
        return
    selector = data[0] % len(READERS)
    name, read = READERS[selector]
    folder = ROOT / str(selector)
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data[1:])
    try:
        rows = read(path)
    except (CsvFormatError, DatasetError) as exc:
        assert str(path) in str(exc), f"error does not name the file: {exc}"
        return
    for row in rows:
        _check_row(row)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
