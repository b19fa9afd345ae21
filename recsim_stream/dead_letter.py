"""Dead-letter records: a refused record plus why and where it was refused (pure codec, no Kafka).

A dead letter keeps the original key and value bytes so the record can be inspected or replayed after
a fix, the ``BadReason`` and detail from the decoder, and the source topic, partition and offset so
it can be found in the source topic. The wire format is a msgpack map (schema ``v`` = 1):

    v: 1, value: bin | nil, value_size: int, key: bin | nil, reason: str, detail: str,
    topic: str, partition: int, offset: int, at: float (unix seconds when dead-lettered)

``value`` holds at most ``MAX_KEPT_VALUE_BYTES`` bytes of the original, so a dead letter of an
oversized record still fits in a Kafka message; ``value_size`` is the original length.
Decoding never raises and never unpickles: anything else becomes a ``BadEvent``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack

from recsim_stream.events import BadEvent, BadReason, unpack_versioned_map

DEAD_LETTER_VERSION = 1
MAX_KEPT_VALUE_BYTES = 64 * 1024
# Enough for the kept value, the key and the envelope; anything longer was not written by this module.
MAX_DEAD_LETTER_BYTES = 2 * MAX_KEPT_VALUE_BYTES

_REASONS = {r.value: r for r in BadReason}
_FIELDS = ("value", "value_size", "key", "reason", "detail", "topic", "partition", "offset", "at")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes | None  # the original value, cut to MAX_KEPT_VALUE_BYTES
    value_size: int  # length of the original value (0 for a missing value)
    key: bytes | None
    reason: BadReason
    detail: str
    topic: str
    partition: int
    offset: int
    dead_lettered_at: float  # unix seconds

    @property
    def truncated(self) -> bool:
        return self.value is not None and len(self.value) < self.value_size


def make_dead_letter(
    *,
    value: bytes | None,
    key: bytes | None,
    bad: BadEvent,
    topic: str,
    partition: int,
    offset: int,
    now: float,
) -> DeadLetter:
    """The dead letter of one refused record; the value is cut to ``MAX_KEPT_VALUE_BYTES``."""
    kept = None if value is None else bytes(value[:MAX_KEPT_VALUE_BYTES])
    size = 0 if value is None else len(value)
    return DeadLetter(kept, size, key, bad.reason, bad.detail, topic, partition, offset, now)


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return msgpack.packb(
        {
            "v": DEAD_LETTER_VERSION,
            "value": letter.value,
            "value_size": letter.value_size,
            "key": letter.key,
            "reason": letter.reason.value,
            "detail": letter.detail,
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "at": letter.dead_lettered_at,
        },
        use_bin_type=True,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape_error(record: dict) -> str | None:
    """What is wrong with the fields of a decoded map, or None when every field has its type."""
    for name in ("value", "key"):
        if not (record.get(name) is None or isinstance(record.get(name), bytes)):
            return f"{name} must be bytes or nil, got {type(record.get(name)).__name__}"
    for name in ("reason", "detail", "topic"):
        if not isinstance(record.get(name), str):
            return f"{name} must be a string, got {type(record.get(name)).__name__}"
    for name in ("value_size", "partition", "offset"):
        if not _is_int(record.get(name)) or record[name] < 0:
            return f"{name} must be an integer >= 0, got {record.get(name)!r}"[:200]
    at = record.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        return f"at must be a finite number, got {at!r}"[:200]
    return None


def decode_dead_letter(raw: bytes) -> DeadLetter | BadEvent:
    """Decode one dead-letter record; never raises."""
    record = unpack_versioned_map(raw, MAX_DEAD_LETTER_BYTES, DEAD_LETTER_VERSION)
    if isinstance(record, BadEvent):
        return record
    missing = [name for name in _FIELDS if name not in record]
    if missing:
        return BadEvent(BadReason.MISSING_FIELD, f"missing {', '.join(missing)}")
    problem = _shape_error(record)
    if problem is not None:
        return BadEvent(BadReason.WRONG_TYPE, problem)
    reason = _REASONS.get(record["reason"])
    if reason is None:
        return BadEvent(BadReason.BAD_VALUE, f"reason {record['reason'][:40]!r} is not a known BadReason")
    return DeadLetter(
        value=record["value"],
        value_size=record["value_size"],
        key=record["key"],
        reason=reason,
        detail=record["detail"],
        topic=record["topic"],
        partition=record["partition"],
        offset=record["offset"],
        dead_lettered_at=float(record["at"]),
    )
