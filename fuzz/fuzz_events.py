"""Fuzz the Kafka record decoders of events.py (``decode_event``, ``decode_item``).

Invariant: any bytes become an Event / ItemMeta or a BadEvent whose reason is a BadReason; nothing
raises. What is accepted re-encodes to a record that decodes to the same value, so the updater never
holds an event that it could not write back (to a dead letter or a replay file), and its ids survive
the numpy strings of a snapshot unchanged.

    .venv/bin/python fuzz/fuzz_events.py var/fuzz/events/corpus fuzz/seeds/events -max_total_time=60
    .venv/bin/python fuzz/fuzz_events.py <crash file>     # replay one input
"""

import sys

import atheris
import numpy as np

with atheris.instrument_imports(include=["recsim_stream"]):
    from recsim_stream.events import (
        BadEvent,
        BadReason,
        Event,
        ItemMeta,
        decode_event,
        decode_item,
        encode_event,
        encode_item,
    )


def test_one_input(data: bytes) -> None:
    event = decode_event(data)
    if isinstance(event, BadEvent):
        assert isinstance(event.reason, BadReason) and isinstance(event.detail, str), event
    else:
        assert isinstance(event, Event), event
        assert decode_event(encode_event(event)) == event, event
        assert np.array([event.item_id]).tolist() == [event.item_id], event
    item = decode_item(data)
    if isinstance(item, BadEvent):
        assert isinstance(item.reason, BadReason) and isinstance(item.detail, str), item
    else:
        assert isinstance(item, ItemMeta), item
        assert decode_item(encode_item(item)) == item, item
        assert np.array([item.item_id]).tolist() == [item.item_id], item


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
