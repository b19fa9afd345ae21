"""Cost of decoding one ``events`` record (msgpack -> checked ``Event``), per record: a part of the
updater's per-record work that does not depend on the learner.

    .venv/bin/python scripts/decode_cost.py --records 100000 --repeats 7

The records are the simulator's events as its producer encodes them (``events.encode_event``), half
with a session id; every one is valid, so this times the path well-formed records take. Prints the
median over repeats of microseconds per record.
"""

from __future__ import annotations

import argparse
import statistics
import time

from recsim_stream.events import Event, EventKind, decode_event, encode_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    kinds = list(EventKind)
    raws = [
        encode_event(
            Event(f"u{i % 5000}", f"i{i % 20000}", kinds[i % 7 % 3], 1.7e9 + i, f"s{i}" if i % 2 else None)
        )
        for i in range(args.records)
    ]
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for raw in raws:
            decode_event(raw)
        times.append(time.perf_counter() - started)
    print(
        f"decode_event: {statistics.median(times) / args.records * 1e6:.3f} us per record (median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
