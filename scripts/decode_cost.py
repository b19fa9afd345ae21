"""Cost of decoding one ``events`` record (msgpack -> checked ``Event``), per record: a part of the
updater's per-record work that does not depend on the learner.

    .venv/bin/python scripts/decode_cost.py --records 100000 --repeats 7

The records are the simulator's, encoded as its producer encodes them (``bench_costs.simulated_stream``,
the stream ``bench scaling``'s cost model decodes); every one is valid, so this times the path
well-formed records take. Prints the median over repeats of microseconds of CPU per record.
"""

from __future__ import annotations

import argparse
import statistics

from recsim_stream.bench_costs import simulated_stream, timed
from recsim_stream.events import decode_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    raws = simulated_stream(args.records).raws
    cpu, _ = timed(lambda: [decode_event(raw) for raw in raws], args.repeats)
    print(
        f"decode_event: {statistics.median(cpu) / len(raws) * 1e6:.3f} us per record "
        f"(median of {args.repeats}, {len(raws):,} records)"
    )


if __name__ == "__main__":
    main()
