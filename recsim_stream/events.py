"""Events and item metadata, their msgpack wire format, and validation.

Decoding never raises: arbitrary bytes become an ``Event`` (or ``ItemMeta``) or a ``BadEvent`` whose
``reason`` comes from a fixed set, so a bad record can be dead-lettered and counted instead of
crashing a consumer. The wire format is a msgpack map with short keys (about 75 bytes per event)
and a schema version ``v``; README.md documents each field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import msgpack

from recsim_stream.config import EventLimits

SCHEMA_VERSION = 1


class EventKind(StrEnum):
    CLICK = "click"
    CART = "cart"
    PURCHASE = "purchase"


class BadReason(StrEnum):
    """Why a record was refused; each value is one dead-letter reason and one metric label."""

    TOO_LARGE = "too_large"
    NOT_MSGPACK = "not_msgpack"
    NOT_A_MAP = "not_a_map"
    WRONG_SCHEMA_VERSION = "wrong_schema_version"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_KIND = "unknown_kind"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    ID_EMPTY = "id_empty"
    ID_TOO_LONG = "id_too_long"
    BAD_VALUE = "bad_value"
    LATE = "late"  # set by the session windows, not by the decoder


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    kind: EventKind
    ts: float  # event time, unix seconds
    session_id: str | None = None


class EventFields(Protocol):
    """What the session windows and the learner read from an event: an ``Event``, or any record with
    these fields (eval's ``Step`` is passed as it is: copying each step into an ``Event`` was a sixth of
    the learner's per-event cost)."""

    @property
    def user_id(self) -> str: ...

    @property
    def item_id(self) -> str: ...

    @property
    def kind(self) -> EventKind: ...

    @property
    def ts(self) -> float: ...

    @property
    def session_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ItemMeta:
    item_id: str
    title: str = ""
    category: str = ""  # a path such as "electronics.smartphone"; may be empty
    price: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)  # brand, year, ...
    ts: float | None = None  # when the item was listed


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    """An item taken off the catalogue: on the items topic, a tombstone (its key, no value)."""

    item_id: str
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class BadEvent:
    reason: BadReason
    detail: str


_KINDS = {k.value: k for k in EventKind}
_DEFAULT_LIMITS = EventLimits()


def encode_event(event: Event) -> bytes:
    record = {
        "v": SCHEMA_VERSION,
        "u": event.user_id,
        "i": event.item_id,
        "k": event.kind.value,
        "t": event.ts,
    }
    if event.session_id is not None:
        record["s"] = event.session_id
    return msgpack.packb(record)


def encode_item(item: ItemMeta) -> bytes:
    record: dict[str, object] = {"v": SCHEMA_VERSION, "i": item.item_id}
    if item.title:
        record["title"] = item.title
    if item.category:
        record["cat"] = item.category
    if item.price is not None:
        record["price"] = item.price
    if item.attributes:
        record["attrs"] = dict(item.attributes)
    if item.ts is not None:
        record["t"] = item.ts
    return msgpack.packb(record)


def unpack_versioned_map(raw: bytes, max_bytes: int, version: int) -> dict | BadEvent:
    """The msgpack map of one record with schema version ``version``, or why not; never raises.

    Shared by every record type on the wire (events, items, dead letters)."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        return BadEvent(BadReason.WRONG_TYPE, f"record value must be bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        return BadEvent(BadReason.TOO_LARGE, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        record = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        return BadEvent(BadReason.NOT_MSGPACK, f"{type(exc).__name__}: {exc}"[:200])
    if not isinstance(record, dict):
        return BadEvent(BadReason.NOT_A_MAP, f"expected a msgpack map, got {type(record).__name__}")
    found = record.get("v")
    # type() check: True and 1.0 compare equal to 1 but are not schema version 1.
    if type(found) is not int or found != version:
        return BadEvent(BadReason.WRONG_SCHEMA_VERSION, f"expected v={version}, got {found!r}"[:200])
    return record


def _short_id(value: object, limits: EventLimits) -> bool:
    """The common valid id in one test: a short non-empty string without NUL. UTF-8 (surrogatepass)
    takes at most 4 bytes a code point, so one this short needs no encoding to know its length."""
    return (
        type(value) is str and value != "" and len(value) * 4 <= limits.max_id_bytes and "\x00" not in value
    )


def _id(
    record: dict, key: str, name: str, limits: EventLimits, required: bool = True
) -> str | BadEvent | None:
    value = record.get(key)
    if _short_id(value, limits):
        return value
    if value is None:
        return BadEvent(BadReason.MISSING_FIELD, f"{name} ({key!r}) is missing") if required else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # integer ids are common upstream; ids are strings here
    elif not isinstance(value, str):
        return BadEvent(BadReason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
    if not value:
        return BadEvent(BadReason.ID_EMPTY, f"{name} is empty")
    if "\x00" in value:  # snapshots keep ids as numpy strings, which drop trailing NULs: "x\0" would be "x"
        return BadEvent(BadReason.BAD_VALUE, f"{name} contains a NUL character")
    if len(value) > limits.max_id_bytes or len(value.encode("utf-8", "surrogatepass")) > limits.max_id_bytes:
        return BadEvent(BadReason.ID_TOO_LONG, f"{name} is longer than {limits.max_id_bytes} bytes")
    return value


def _ts(value: object, limits: EventLimits, required: bool = True) -> float | BadEvent | None:
    if value is None:
        return BadEvent(BadReason.MISSING_FIELD, "ts ('t') is missing") if required else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return BadEvent(BadReason.WRONG_TYPE, f"ts must be a number, got {type(value).__name__}")
    ts = float(value)
    if not (math.isfinite(ts) and limits.min_ts <= ts <= limits.max_ts):
        return BadEvent(BadReason.TS_OUT_OF_RANGE, f"ts {value!r} outside [{limits.min_ts}, {limits.max_ts}]")
    return ts


def decode_event(raw: bytes, limits: EventLimits = _DEFAULT_LIMITS) -> Event | BadEvent:
    """Decode one ``events`` record; never raises."""
    record = unpack_versioned_map(raw, limits.max_record_bytes, SCHEMA_VERSION)
    if isinstance(record, BadEvent):
        return record
    # The common well-formed record (short string ids) in one pass: decoding was a sixth of the
    # updater's per-record work. Every record this accepts passes ``_checked_event`` with the same
    # event; every other record, valid or not, is left to it.
    user, item, kind, ts, session = (
        record.get("u"),
        record.get("i"),
        record.get("k"),
        record.get("t"),
        record.get("s"),
    )
    if (
        _short_id(user, limits)
        and _short_id(item, limits)
        and type(kind) is str
        and kind in _KINDS
        and (type(ts) is float or type(ts) is int)
        and math.isfinite(ts)
        and limits.min_ts <= ts <= limits.max_ts
        and (session is None or _short_id(session, limits))
    ):
        return Event(user, item, _KINDS[kind], float(ts), session)
    return _checked_event(record, limits)


def _checked_event(record: dict, limits: EventLimits) -> Event | BadEvent:
    """An event map's fields checked one by one: the event, or the first reason it is bad."""
    user = _id(record, "u", "user_id", limits)
    if isinstance(user, BadEvent):
        return user
    item = _id(record, "i", "item_id", limits)
    if isinstance(item, BadEvent):
        return item
    kind_value = record.get("k")
    if kind_value is None:
        return BadEvent(BadReason.MISSING_FIELD, "kind ('k') is missing")
    if not isinstance(kind_value, str):
        return BadEvent(BadReason.WRONG_TYPE, f"kind must be a string, got {type(kind_value).__name__}")
    kind = _KINDS.get(kind_value)
    if kind is None:
        return BadEvent(
            BadReason.UNKNOWN_KIND, f"kind {kind_value[:40]!r} is not one of click, cart, purchase"
        )
    ts = _ts(record.get("t"), limits)
    if isinstance(ts, BadEvent):
        return ts
    session = _id(record, "s", "session_id", limits, required=False)
    if isinstance(session, BadEvent):
        return session
    return Event(user, item, kind, ts, session)


def decode_item(raw: bytes, limits: EventLimits = _DEFAULT_LIMITS) -> ItemMeta | BadEvent:
    """Decode one ``items`` record; never raises."""
    record = unpack_versioned_map(raw, limits.max_record_bytes, SCHEMA_VERSION)
    if isinstance(record, BadEvent):
        return record
    item = _id(record, "i", "item_id", limits)
    if isinstance(item, BadEvent):
        return item
    texts = {}
    for key in ("title", "cat"):
        value = record.get(key, "")
        if not isinstance(value, str):
            return BadEvent(BadReason.WRONG_TYPE, f"{key} must be a string, got {type(value).__name__}")
        texts[key] = value
    price = record.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            return BadEvent(BadReason.WRONG_TYPE, f"price must be a number, got {type(price).__name__}")
        if not (math.isfinite(price) and price >= 0):
            return BadEvent(BadReason.BAD_VALUE, f"price must be finite and >= 0, got {price!r}")
        price = float(price)
    attrs = record.get("attrs", {})
    if not isinstance(attrs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
    ):
        return BadEvent(BadReason.WRONG_TYPE, "attrs must be a map of strings to strings")
    ts = _ts(record.get("t"), limits, required=False)
    if isinstance(ts, BadEvent):
        return ts
    return ItemMeta(item, texts["title"], texts["cat"], price, attrs, ts)
