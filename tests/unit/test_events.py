import msgpack
import pytest

from recsim_stream.config import EventLimits
from recsim_stream.events import (
    BadEvent,
    BadReason,
    Event,
    EventKind,
    ItemMeta,
    decode_event,
    decode_item,
    encode_event,
    encode_item,
)


def event_record(**overrides: object) -> bytes:
    record = {"v": 1, "u": "user-1", "i": "item-1", "k": "click", "t": 1_700_000_000.0}
    record.update(overrides)
    return msgpack.packb({k: v for k, v in record.items() if v is not DROP})


DROP = object()


def test_event_round_trip_keeps_every_field() -> None:
    event = Event("user-1", "item-9", EventKind.PURCHASE, 1_700_000_123.25, "session-3")
    assert decode_event(encode_event(event)) == event


def test_event_without_session_round_trips_to_none() -> None:
    event = Event("user-1", "item-9", EventKind.CART, 1_700_000_000.0)
    assert decode_event(encode_event(event)) == event


def test_item_round_trip_keeps_every_field() -> None:
    item = ItemMeta("item-9", "Phone X", "electronics.smartphone", 199.5, {"brand": "acme"}, 1_700_000_000.0)
    assert decode_item(encode_item(item)) == item


def test_item_with_only_an_id_round_trips_to_defaults() -> None:
    assert decode_item(encode_item(ItemMeta("item-9"))) == ItemMeta("item-9")


def test_integer_ids_become_strings() -> None:
    assert decode_event(event_record(u=17, i=42)) == Event("17", "42", EventKind.CLICK, 1_700_000_000.0)


def test_integer_ts_becomes_float() -> None:
    assert decode_event(event_record(t=1_700_000_000)).ts == 1_700_000_000.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00" * 4097, BadReason.TOO_LARGE),
        (b"\xc1", BadReason.NOT_MSGPACK),
        (msgpack.packb({"v": 1}) + b"\x00", BadReason.NOT_MSGPACK),
        (msgpack.packb([1, "user-1"]), BadReason.NOT_A_MAP),
        (event_record(v=2), BadReason.WRONG_SCHEMA_VERSION),
        (event_record(v=DROP), BadReason.WRONG_SCHEMA_VERSION),
        (event_record(v=True), BadReason.WRONG_SCHEMA_VERSION),
        (event_record(v=1.0), BadReason.WRONG_SCHEMA_VERSION),
        (event_record(u=DROP), BadReason.MISSING_FIELD),
        (event_record(k=DROP), BadReason.MISSING_FIELD),
        (event_record(t=DROP), BadReason.MISSING_FIELD),
        (event_record(i=["item-1"]), BadReason.WRONG_TYPE),
        (event_record(k=1), BadReason.WRONG_TYPE),
        (event_record(t="yesterday"), BadReason.WRONG_TYPE),
        (event_record(t=True), BadReason.WRONG_TYPE),
        (event_record(k="wishlist"), BadReason.UNKNOWN_KIND),
        (event_record(t=-1.0), BadReason.TS_OUT_OF_RANGE),
        (event_record(t=float("nan")), BadReason.TS_OUT_OF_RANGE),
        (event_record(t=5_000_000_000.0), BadReason.TS_OUT_OF_RANGE),
        (event_record(u=""), BadReason.ID_EMPTY),
        (event_record(s=""), BadReason.ID_EMPTY),
        (event_record(i="x" * 129), BadReason.ID_TOO_LONG),
        (event_record(i="é" * 65), BadReason.ID_TOO_LONG),
    ],
)
def test_each_crafted_event_record_gets_its_reason(raw: bytes, reason: BadReason) -> None:
    decoded = decode_event(raw)
    assert isinstance(decoded, BadEvent)
    assert decoded.reason == reason


def test_a_value_that_is_not_bytes_is_the_wrong_type() -> None:
    assert decode_event(None) == BadEvent(BadReason.WRONG_TYPE, "record value must be bytes, got NoneType")


def test_the_record_size_limit_comes_from_the_limits() -> None:
    assert decode_event(event_record(), EventLimits(max_record_bytes=10)).reason == BadReason.TOO_LARGE


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"v": 1, "i": "item-1", "price": -1.0}, BadReason.BAD_VALUE),
        ({"v": 1, "i": "item-1", "price": float("inf")}, BadReason.BAD_VALUE),
        ({"v": 1, "i": "item-1", "price": "cheap"}, BadReason.WRONG_TYPE),
        ({"v": 1, "i": "item-1", "title": 3}, BadReason.WRONG_TYPE),
        ({"v": 1, "i": "item-1", "attrs": {"year": 2020}}, BadReason.WRONG_TYPE),
        ({"v": 1, "i": "item-1", "t": 1e12}, BadReason.TS_OUT_OF_RANGE),
        ({"v": 1, "title": "no id"}, BadReason.MISSING_FIELD),
    ],
)
def test_each_crafted_item_record_gets_its_reason(record: dict, reason: BadReason) -> None:
    decoded = decode_item(msgpack.packb(record))
    assert isinstance(decoded, BadEvent)
    assert decoded.reason == reason
