import msgpack

from recsim_stream.dead_letter import (
    MAX_KEPT_VALUE_BYTES,
    DeadLetter,
    decode_dead_letter,
    encode_dead_letter,
    make_dead_letter,
)
from recsim_stream.events import BadEvent, BadReason

LETTER = DeadLetter(
    value=b"\xc1 not msgpack",
    value_size=14,
    key=b"user-1",
    reason=BadReason.NOT_MSGPACK,
    detail="ExtraData: unpack(b) received extra data.",
    topic="events",
    partition=3,
    offset=42,
    dead_lettered_at=1_800_000_000.5,
)


def fields(**overrides: object) -> dict:
    record = {
        "v": 1,
        "value": b"x",
        "value_size": 1,
        "key": None,
        "reason": "unknown_kind",
        "detail": "d",
        "topic": "events",
        "partition": 0,
        "offset": 0,
        "at": 1.0,
    }
    record.update(overrides)
    return record


def test_round_trip_keeps_every_field() -> None:
    assert decode_dead_letter(encode_dead_letter(LETTER)) == LETTER


def test_round_trip_of_a_missing_key_and_value() -> None:
    letter = make_dead_letter(
        value=None,
        key=None,
        bad=BadEvent(BadReason.WRONG_TYPE, "none"),
        topic="t",
        partition=0,
        offset=7,
        now=2.0,
    )
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


def test_make_dead_letter_cuts_an_oversized_value_and_keeps_its_size() -> None:
    letter = make_dead_letter(
        value=b"a" * (MAX_KEPT_VALUE_BYTES + 10),
        key=b"k",
        bad=BadEvent(BadReason.TOO_LARGE, "big"),
        topic="events",
        partition=1,
        offset=2,
        now=3.0,
    )
    assert (len(letter.value), letter.value_size, letter.truncated) == (MAX_KEPT_VALUE_BYTES, 65546, True)


def test_make_dead_letter_keeps_a_small_value_whole() -> None:
    letter = make_dead_letter(
        value=b"abc",
        key=None,
        bad=BadEvent(BadReason.NOT_A_MAP, "x"),
        topic="t",
        partition=0,
        offset=0,
        now=0.0,
    )
    assert (letter.value, letter.value_size, letter.truncated) == (b"abc", 3, False)


def test_garbage_bytes_are_not_msgpack() -> None:
    assert decode_dead_letter(b"\xc1").reason == BadReason.NOT_MSGPACK


def test_a_list_is_not_a_map() -> None:
    assert decode_dead_letter(msgpack.packb([1, 2])).reason == BadReason.NOT_A_MAP


def test_version_true_is_not_version_1() -> None:
    assert decode_dead_letter(msgpack.packb(fields(v=True))).reason == BadReason.WRONG_SCHEMA_VERSION


def test_a_missing_field_is_named() -> None:
    record = fields()
    del record["offset"]
    assert decode_dead_letter(msgpack.packb(record)) == BadEvent(BadReason.MISSING_FIELD, "missing offset")


def test_a_string_value_is_the_wrong_type() -> None:
    decoded = decode_dead_letter(msgpack.packb(fields(value="text")))
    assert decoded == BadEvent(BadReason.WRONG_TYPE, "value must be bytes or nil, got str")


def test_a_negative_offset_is_refused() -> None:
    assert decode_dead_letter(msgpack.packb(fields(offset=-1))).reason == BadReason.WRONG_TYPE


def test_an_unknown_reason_is_a_bad_value() -> None:
    assert decode_dead_letter(msgpack.packb(fields(reason="gremlins"))).reason == BadReason.BAD_VALUE


def test_an_oversized_record_is_refused_before_unpacking() -> None:
    assert decode_dead_letter(b"\x00" * (2 * MAX_KEPT_VALUE_BYTES + 1)).reason == BadReason.TOO_LARGE
