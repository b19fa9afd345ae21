"""Real-data loaders against the reference canonical conversions, the format detector, and convert."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsim_stream import canonical_csv
from recsim_stream.canonical_csv import CsvStats
from recsim_stream.datasets import (
    REES46_COLUMNS,
    DataFormat,
    DatasetError,
    convert,
    detect_format,
    open_dataset,
    read_rees46_events,
)
from recsim_stream.events import Event, EventKind

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
REES46 = DATA / "rees46-multicat-oct2019-head"
MOVIELENS = DATA / "movielens-100k"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data sets not found at {DATA}")


def _item_rows(items) -> list[tuple]:
    return [(i.item_id, i.title, i.category, i.price) for i in items]


@needs_data
@pytest.mark.parametrize("folder", [REES46, MOVIELENS], ids=["rees46", "movielens"])
def test_loader_events_equal_the_reference_conversion(folder: Path) -> None:
    expected = list(canonical_csv.read_events(folder / "canonical" / "events.csv"))
    assert list(open_dataset(folder).events()) == expected


@needs_data
@pytest.mark.parametrize("folder", [REES46, MOVIELENS], ids=["rees46", "movielens"])
def test_loader_items_equal_the_reference_conversion(folder: Path) -> None:
    expected = _item_rows(canonical_csv.read_items(folder / "canonical" / "items.csv"))
    assert _item_rows(open_dataset(folder).items()) == expected


@needs_data
@pytest.mark.parametrize("folder", [REES46, MOVIELENS], ids=["rees46", "movielens"])
def test_convert_writes_the_reference_files_byte_for_byte(folder: Path, tmp_path: Path) -> None:
    convert(folder, tmp_path)
    assert (tmp_path / "events.csv").read_bytes() == (folder / "canonical" / "events.csv").read_bytes()
    assert (tmp_path / "items.csv").read_bytes() == (folder / "canonical" / "items.csv").read_bytes()


@needs_data
def test_detector_recognises_each_source() -> None:
    assert detect_format(REES46) == DataFormat.REES46
    assert detect_format(REES46 / "events.csv") == DataFormat.REES46
    assert detect_format(MOVIELENS) == DataFormat.MOVIELENS
    assert detect_format(MOVIELENS / "ml-100k.inter") == DataFormat.MOVIELENS
    assert detect_format(REES46 / "canonical") == DataFormat.CANONICAL
    assert detect_format(MOVIELENS / "canonical" / "events.csv") == DataFormat.CANONICAL


@needs_data
def test_canonical_folder_yields_its_items() -> None:
    assert len(open_dataset(MOVIELENS / "canonical").items()) == 1682


@needs_data
def test_convert_refuses_to_overwrite_its_source() -> None:
    with pytest.raises(DatasetError, match="other than the source"):
        convert(REES46 / "canonical", REES46 / "canonical")


def _rees46_file(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "events.csv"
    path.write_bytes(("\r\n".join([",".join(REES46_COLUMNS), *rows]) + "\r\n").encode())
    return path


def test_rees46_remove_from_cart_is_skipped_and_counted(tmp_path: Path) -> None:
    path = _rees46_file(
        tmp_path,
        "2019-10-01 00:00:05 UTC,remove_from_cart,1,9,,,1.00,7,s1",
        "2019-10-01 00:00:06 UTC,cart,1,9,,,1.00,7,s1",
    )
    stats = CsvStats()
    events = list(read_rees46_events(path, stats=stats))
    assert events == [Event("7", "1", EventKind.CART, 1569888006.0, "s1")]
    assert dict(stats.skipped) == {"remove_from_cart": 1}


def test_rees46_bad_time_names_the_line(tmp_path: Path) -> None:
    path = _rees46_file(tmp_path, "2019-10-01T00:00:05,view,1,9,,,1.00,7,s1")
    with pytest.raises(DatasetError, match=r"events.csv:2: expected 'YYYY-MM-DD HH:MM:SS UTC'"):
        list(read_rees46_events(path))


def test_rees46_unknown_kind_is_skipped_when_asked(tmp_path: Path) -> None:
    path = _rees46_file(tmp_path, "2019-10-01 00:00:05 UTC,wish,1,9,,,1.00,7,s1")
    stats = CsvStats()
    assert list(read_rees46_events(path, errors="skip", stats=stats)) == []
    assert dict(stats.skipped) == {"unknown_kind": 1}


def test_rees46_rows_out_of_time_order_are_refused(tmp_path: Path) -> None:
    path = _rees46_file(
        tmp_path,
        "2019-10-01 00:00:05 UTC,view,1,9,,,1.00,7,s1",
        "2019-10-01 00:00:04 UTC,view,2,9,,,1.00,7,s1",
    )
    with pytest.raises(DatasetError, match="events.csv:3: expected rows sorted by event_time"):
        list(read_rees46_events(path))


def test_rees46_item_title_is_brand_and_code_and_category_falls_back_to_id(tmp_path: Path) -> None:
    path = _rees46_file(
        tmp_path,
        "2019-10-01 00:00:05 UTC,view,1,9,,acme,2.50,7,s1",
        "2019-10-01 00:00:06 UTC,view,2,8,home.lamp,,0.0,7,s1",
    )
    assert _item_rows(open_dataset(path).items()) == [
        ("1", "acme", "9", 2.5),
        ("2", "home.lamp", "home.lamp", 0.0),
    ]


def test_movielens_ties_keep_file_order_and_items_get_year_and_genres(tmp_path: Path) -> None:
    (tmp_path / "m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t50\n2\t11\t3\t20\n3\t12\t5\t50\n"
    )
    (tmp_path / "m.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tHeat\t1995\tAction Crime\n"
    )
    dataset = open_dataset(tmp_path)
    assert [(e.user_id, e.ts) for e in dataset.events()] == [("2", 20.0), ("1", 50.0), ("3", 50.0)]
    assert _item_rows(dataset.items()) == [("10", "Heat (1995)", "Action|Crime", None)]


def test_canonical_rows_out_of_ts_order_are_refused(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(
        "ts,user_id,item_id,event_type,session_id\n5,u,i,click,\n4,u,i,click,\n"
    )
    with pytest.raises(DatasetError, match="expected rows in ts order"):
        list(open_dataset(tmp_path).events())


def test_unknown_file_is_refused_with_the_expected_formats(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DatasetError, match="expected a canonical events CSV"):
        open_dataset(path)


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="found nothing there"):
        open_dataset(tmp_path / "nope")
