import msgpack
from hypothesis import given
from hypothesis import strategies as st

from recsim_stream.dead_letter import DeadLetter, decode_dead_letter, encode_dead_letter
from recsim_stream.events import BadEvent, BadReason

letters = st.builds(
    lambda value, key, reason, detail, topic, partition, offset, at: DeadLetter(
        value, 0 if value is None else len(value), key, reason, detail, topic, partition, offset, at
    ),
    st.none() | st.binary(max_size=300),
    st.none() | st.binary(max_size=50),
    st.sampled_from(list(BadReason)),
    st.text(max_size=200),
    st.text(min_size=1, max_size=50),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(letters)
def test_encode_then_decode_returns_the_same_letter(letter: DeadLetter) -> None:
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


@given(st.binary(max_size=500))
def test_decoding_arbitrary_bytes_never_raises(raw: bytes) -> None:
    assert isinstance(decode_dead_letter(raw), DeadLetter | BadEvent)


@given(st.dictionaries(st.sampled_from(["v", "value", "key", "reason", "offset", "at", "x"]), msgpack_values))
def test_decoding_arbitrary_maps_never_raises(record: dict) -> None:
    assert isinstance(decode_dead_letter(msgpack.packb(record)), DeadLetter | BadEvent)
