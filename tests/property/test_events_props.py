import msgpack
from hypothesis import given
from hypothesis import strategies as st

from recsim_stream.config import EventLimits
from recsim_stream.events import (
    BadEvent,
    Event,
    EventKind,
    ItemMeta,
    _checked_event,
    decode_event,
    decode_item,
    encode_event,
    encode_item,
)

# A NUL in an id is refused (snapshots keep ids as numpy strings, which drop trailing NULs).
ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=32)
timestamps = st.floats(min_value=0.0, max_value=4_102_444_800.0, allow_nan=False)
events = st.builds(Event, ids, ids, st.sampled_from(list(EventKind)), timestamps, st.none() | ids)
items = st.builds(
    ItemMeta,
    ids,
    st.text(max_size=50),
    st.text(max_size=30),
    st.none() | st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    st.none() | timestamps,
)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
event_keys = st.sampled_from(["v", "u", "i", "k", "t", "s", "title", "cat", "price", "attrs", "other"])


@given(events)
def test_event_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


@given(items)
def test_item_round_trip(item: ItemMeta) -> None:
    assert decode_item(encode_item(item)) == item


@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises(raw: bytes) -> None:
    assert isinstance(decode_event(raw), Event | BadEvent)
    assert isinstance(decode_item(raw), ItemMeta | BadEvent)


@given(st.dictionaries(event_keys, msgpack_values, max_size=8))
def test_decoding_arbitrary_maps_never_raises(record: dict) -> None:
    raw = msgpack.packb(record)
    assert isinstance(decode_event(raw), Event | BadEvent)
    assert isinstance(decode_item(raw), ItemMeta | BadEvent)


@given(st.dictionaries(event_keys, msgpack_values, max_size=8))
def test_arbitrary_maps_with_version_1_never_raise(record: dict) -> None:
    raw = msgpack.packb({**record, "v": 1})
    assert isinstance(decode_event(raw), Event | BadEvent)
    assert isinstance(decode_item(raw), ItemMeta | BadEvent)


# Field values near the checks' edges: valid and invalid ids, kinds and times of every type.
edge_values = (
    msgpack_values
    | ids
    | st.sampled_from(["click", "cart", "purchase", "view", "", "x\x00", "é" * 32, "é" * 33, "a" * 129])
    | timestamps
    | st.sampled_from([-1.0, 4_102_444_801.0, float("inf"), float("nan"), 0, 2**63, True])
)
event_fields = st.fixed_dictionaries(
    {"v": st.just(1)}, optional={k: edge_values for k in ("u", "i", "k", "t", "s", "other")}
)


@given(event_fields)
def test_the_one_pass_decoding_agrees_with_the_field_by_field_checks(record: dict) -> None:
    """decode_event's fast path for well-formed records gives what checking each field gives."""
    decoded, checked = decode_event(msgpack.packb(record)), _checked_event(record, EventLimits())
    assert decoded == checked
