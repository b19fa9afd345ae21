from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.canonical_csv import (
    CsvFormatError,
    CsvStats,
    read_events,
    read_items,
    write_events,
    write_items,
)
from recsim_stream.events import Event, EventKind, ItemMeta

HEADER = "ts,user_id,item_id,event_type,session_id\n"


def _write(tmp_path: Path, text: str | bytes, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_a_ragged_row_is_an_error_naming_file_and_line(tmp_path):
    path = _write(tmp_path, HEADER + "1,u,i,click,\n2,u,i\n")
    with pytest.raises(CsvFormatError, match=r"events.csv:3: missing_field"):
        list(read_events(path))


def test_skip_mode_counts_each_bad_row_by_reason(tmp_path):
    path = _write(tmp_path, HEADER + "1,u,i,click,\nx,u,i,click,\n3,u,i,view,\n4,u,i,purchase,s\n")
    stats = CsvStats()
    events = list(read_events(path, errors="skip", stats=stats))
    assert [e.ts for e in events] == [1.0, 4.0]
    assert stats.rows == 2
    assert dict(stats.skipped) == {"wrong_type": 1, "unknown_kind": 1}


def test_a_file_that_is_not_utf8_is_an_error(tmp_path):
    path = _write(tmp_path, HEADER.encode() + b"1,\xff\xfe,i,click,\n")
    with pytest.raises(CsvFormatError, match="not UTF-8"):
        list(read_events(path))


def test_a_wrong_header_is_an_error(tmp_path):
    with pytest.raises(CsvFormatError, match="expected header"):
        list(read_events(_write(tmp_path, "time,who,what\n")))


def test_a_negative_price_is_refused(tmp_path):
    path = _write(tmp_path, "item_id,title,category,price\ni1,t,c,-1\n", "items.csv")
    with pytest.raises(CsvFormatError, match="items.csv:2"):
        list(read_items(path))


ids = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), min_size=1, max_size=20
)
events = st.builds(
    Event,
    user_id=ids,
    item_id=ids,
    kind=st.sampled_from(list(EventKind)),
    ts=st.one_of(st.integers(0, 4_000_000_000).map(float), st.floats(0, 4e9, allow_nan=False)),
    session_id=st.one_of(st.none(), ids),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(events, max_size=30))
def test_events_round_trip_through_the_canonical_csv(tmp_path_factory, written):
    path = tmp_path_factory.mktemp("csv") / "events.csv"
    assert write_events(path, written) == len(written)
    assert list(read_events(path)) == written


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.builds(
            ItemMeta,
            item_id=ids,
            title=st.text(max_size=30),
            category=st.text(max_size=20),
            price=st.one_of(st.none(), st.integers(0, 10**6).map(lambda c: c / 100)),
        ),
        max_size=20,
    )
)
def test_items_round_trip_through_the_canonical_csv(tmp_path_factory, written):
    path = tmp_path_factory.mktemp("csv") / "items.csv"
    write_items(path, written)
    assert list(read_items(path)) == written
