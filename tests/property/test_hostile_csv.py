"""Hostile files for the readers a user points the tools at (canonical CSV, REES46, MovieLens/RecBole):
each bad file or row is an error naming the file (and the line, where there is one) or, in skip mode,
a counted row; no other exception escapes."""

import csv
import io
import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream import canonical_csv, datasets
from recsim_stream.canonical_csv import CsvFormatError, CsvStats, read_events, read_items
from recsim_stream.datasets import DatasetError

HYPOTHESIS = settings(max_examples=40, deadline=None)
EVENTS_HEADER = ",".join(canonical_csv.EVENT_COLUMNS)
REES46_HEADER = ",".join(datasets.REES46_COLUMNS)
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
READERS = {
    "canonical events": ("events.csv", lambda p: list(read_events(p))),
    "canonical events, skip": ("events.csv", lambda p: list(read_events(p, errors="skip"))),
    "canonical items": ("items.csv", lambda p: list(read_items(p))),
    "rees46 events": ("events.csv", lambda p: list(datasets.read_rees46_events(p))),
    "rees46 events, skip": ("events.csv", lambda p: list(datasets.read_rees46_events(p, errors="skip"))),
    "rees46 items": ("events.csv", datasets.read_rees46_items),
    "movielens events": ("data.inter", lambda p: list(datasets.read_movielens_events(p))),
    "movielens items": ("data.item", datasets.read_movielens_items),
    "detected": ("data.inter", lambda p: list(datasets.open_dataset(p).events("skip"))),
}
VALID = {
    "canonical events": f"{EVENTS_HEADER}\n1,u1,i1,click,s1\n2,u2,i2,purchase,\n",
    "canonical items": "item_id,title,category,price\ni1,Toy Story,a.b,1.50\ni2,,,\n",
    "rees46 events": f"{REES46_HEADER}\n2019-10-01 00:00:00 UTC,view,4460,210,,shiseido,35.79,5413,72d7\n",
    "movielens events": f"{INTER_HEADER}\n196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
    "movielens items": f"{ITEM_HEADER}\n1\tToy Story\t1995\tAnimation Comedy\n",
}
VALID["canonical events, skip"] = VALID["canonical events"]
VALID["rees46 events, skip"] = VALID["rees46 events"]
VALID["rees46 items"] = VALID["rees46 events"]
VALID["detected"] = VALID["movielens events"]
# Byte sequences that are not UTF-8: stray continuation, overlong, encoded surrogate, truncated, latin-1.
NOT_UTF8 = [b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf0\x9f\x98", b"caf\xe9", b"\xff\xfe"]

plain_fields = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\x00,\"'"), min_size=1, max_size=8
)


_NEXT = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-csv")


def _file(scratch: Path, name: str, content: bytes) -> Path:
    """``content`` as ``name`` in a folder of its own (format detection looks at neighbours)."""
    folder = scratch / str(next(_NEXT))
    folder.mkdir()
    path = folder / name
    path.write_bytes(content)
    return path


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


@st.composite
def event_rows(draw) -> tuple[list[list[str]], list[bool]]:
    """Canonical event rows, each either well formed or ragged (too few or too many columns)."""
    rows, ok = [], []
    for _ in range(draw(st.integers(1, 12))):
        fields = [str(draw(st.integers(0, 10**9))), draw(plain_fields), draw(plain_fields), "click", ""]
        width = draw(st.sampled_from([5, 5, 5, 1, 2, 3, 4, 6, 9]))
        rows.append((fields + [draw(plain_fields) for _ in range(width)])[:width])
        ok.append(width == 5)
    return rows, ok


@HYPOTHESIS
@given(event_rows())
def test_a_ragged_row_is_an_error_naming_the_file_and_its_line(scratch, drawn):
    rows, ok = drawn
    path = _file(scratch, "events.csv", _csv_text([list(canonical_csv.EVENT_COLUMNS), *rows]).encode())
    if all(ok):
        assert len(list(read_events(path))) == len(rows)
        return
    first_bad_line = ok.index(False) + 2  # line 1 is the header
    with pytest.raises(CsvFormatError, match=f"^{re.escape(str(path))}:{first_bad_line}: missing_field"):
        list(read_events(path))


@HYPOTHESIS
@given(event_rows())
def test_skip_mode_reads_the_good_rows_and_counts_every_ragged_one(scratch, drawn):
    rows, ok = drawn
    path = _file(scratch, "events.csv", _csv_text([list(canonical_csv.EVENT_COLUMNS), *rows]).encode())
    stats = CsvStats()
    events = list(read_events(path, errors="skip", stats=stats))
    assert [(e.user_id, e.item_id) for e in events] == [
        (r[1], r[2]) for r, good in zip(rows, ok, strict=True) if good
    ]
    assert (stats.rows, dict(stats.skipped)) == (
        sum(ok),
        {"missing_field": len(ok) - sum(ok)} if not all(ok) else {},
    )


@HYPOTHESIS
@given(st.sampled_from(sorted(READERS)), st.sampled_from(NOT_UTF8), st.data())
def test_bytes_that_are_not_utf8_are_an_error_naming_the_file(scratch, reader, bad, data):
    name, read = READERS[reader]
    valid = VALID[reader].encode()
    at = data.draw(st.integers(0, len(valid)))
    path = _file(scratch, name, valid[:at] + bad + valid[at:])
    with pytest.raises((CsvFormatError, DatasetError), match=re.escape(str(path))):
        read(path)


@HYPOTHESIS
@given(st.sampled_from(sorted(READERS)), st.binary(max_size=400))
def test_any_bytes_give_rows_or_an_error_naming_the_file(scratch, reader, content):
    name, read = READERS[reader]
    path = _file(scratch, name, content)
    try:
        read(path)
    except (CsvFormatError, DatasetError) as exc:
        assert str(path) in str(exc)


@HYPOTHESIS
@given(st.sampled_from(["user", "item", "session"]), st.integers(0, 3))
def test_a_nul_in_an_id_is_an_error_naming_the_line_or_a_counted_row(scratch, column, position):
    value = "ab"[:position] + "\x00" + "cd"
    row = {"user": f"2,{value},i,click,", "item": f"2,u,{value},click,", "session": f"2,u,i,click,{value}"}[
        column
    ]
    path = _file(scratch, "events.csv", f"{EVENTS_HEADER}\n1,u,i,click,\n{row}\n".encode())
    with pytest.raises(
        CsvFormatError, match=f"^{re.escape(str(path))}:3: bad_value: {column}_id contains a NUL"
    ):
        list(read_events(path))
    stats = CsvStats()
    assert len(list(read_events(path, errors="skip", stats=stats))) == 1
    assert dict(stats.skipped) == {"bad_value": 1}


def test_a_nul_in_an_item_id_of_the_items_file_is_an_error_naming_the_line(scratch):
    path = _file(scratch, "items.csv", b"item_id,title,category,price\ni1,a,b,\ni\x002,a,b,\n")
    with pytest.raises(CsvFormatError, match=f"^{re.escape(str(path))}:3: item_id contains a NUL"):
        list(read_items(path))


@settings(max_examples=6, deadline=None)
@given(st.sampled_from(["canonical events", "canonical items", "rees46 events", "rees46 items"]), st.data())
def test_a_field_over_the_csv_size_limit_is_an_error_naming_the_file_and_line(scratch, reader, data):
    name, read = READERS[reader]
    size = data.draw(st.integers(csv.field_size_limit() + 1, csv.field_size_limit() + 5000))
    lines = VALID[reader].splitlines()
    lines.insert(2, lines[1].replace(",", "," + "x" * size, 1))
    path = _file(scratch, name, ("\n".join(lines) + "\n").encode())
    with pytest.raises(
        (CsvFormatError, DatasetError), match=f"^{re.escape(str(path))}:3: field larger than field limit"
    ):
        read(path)


@HYPOTHESIS
@given(st.integers(129, 5000), st.sampled_from(["user", "item", "session"]))
def test_an_id_over_the_byte_limit_is_an_error_naming_the_line(scratch, length, column):
    value = "é" * (length // 2 + 1)
    row = {"user": f"2,{value},i,click,", "item": f"2,u,{value},click,", "session": f"2,u,i,click,{value}"}[
        column
    ]
    path = _file(scratch, "events.csv", f"{EVENTS_HEADER}\n{row}\n".encode())
    with pytest.raises(CsvFormatError, match=f"^{re.escape(str(path))}:2: id_too_long: {column}_id"):
        list(read_events(path))


@HYPOTHESIS
@given(st.integers(1, 8).filter(lambda n: n != 4), st.sampled_from(["movielens events", "movielens items"]))
def test_a_ragged_recbole_row_is_an_error_naming_the_line(scratch, fields, reader):
    name, read = READERS[reader]
    lines = VALID[reader].splitlines()
    lines.append("\t".join(["7"] * fields))
    path = _file(scratch, name, ("\n".join(lines) + "\n").encode())
    with pytest.raises(
        DatasetError,
        match=f"^{re.escape(str(path))}:{len(lines)}: expected 4 tab-separated fields, got {fields}",
    ):
        read(path)


@HYPOTHESIS
@given(st.sampled_from(["", "nan", "inf", "-inf", "x", "1e999"]), st.sampled_from(["ts", "user", "item"]))
def test_a_movielens_row_without_ids_or_a_finite_timestamp_is_an_error_naming_the_line(scratch, bad, column):
    fields = {"user": "196", "item": "242", "ts": "881250949"}
    fields[column] = bad if column == "ts" else ""
    path = _file(
        scratch,
        "data.inter",
        f"{INTER_HEADER}\n1\t2\t3\t4\n{fields['user']}\t{fields['item']}\t3\t{fields['ts']}\n".encode(),
    )
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}:3: "):
        list(datasets.read_movielens_events(path))
