"""Fuzz the dead-letter decoder (dead_letter.py), which reads back records other tools wrote.

Invariant: any bytes become a DeadLetter or a BadEvent with a BadReason; nothing raises. A decoded
letter re-encodes to bytes that decode to the same letter.

    .venv/bin/python fuzz/fuzz_dead_letter.py var/fuzz/dead_letter/corpus fuzz/seeds/dead_letter -max_total_time=60
"""

import sys

import atheris

with atheris.instrument_imports(include=["recsim_stream"]):
    from recsim_stream.dead_letter import DeadLetter, decode_dead_letter, encode_dead_letter
    from recsim_stream.events import BadEvent, BadReason


def test_one_input(data: bytes) -> None:
    letter = decode_dead_letter(data)
    if isinstance(letter, BadEvent):
        assert isinstance(letter.reason, BadReason) and isinstance(letter.detail, str), letter
        return
    assert isinstance(letter, DeadLetter), letter
    assert decode_dead_letter(encode_dead_letter(letter)) == letter, letter


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
