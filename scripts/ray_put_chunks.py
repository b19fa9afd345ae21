"""CPU of one ``ray.put`` of a float32 array, whole against cut into pieces under 1 MiB.

    .venv/bin/python scripts/ray_put_chunks.py [--puts 300]

Ray copies a buffer of 1 MiB or more into the object store with several threads it starts for that
copy; below it, one memcpy. This is why ``ray_actors.chunked`` ships row tables in slices of at most
``CHUNK_BYTES``. Starts a private local Ray instance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray

from recsim_stream.ray_actors import chunked


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--puts", type=int, default=300)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print("MB    form     wall ms  CPU ms")
    for mb in (0.5, 0.9, 1.1, 1.6, 3.2):
        table = np.ones((int(mb * 2**20 / 256), 64), np.float32)
        for form, value in (("whole", table), ("chunked", chunked(table))):
            ray.put(value)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(args.puts):
                ray.put(value)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{mb:<5} {form:8s} {wall / args.puts * 1e3:7.3f} {cpu / args.puts * 1e3:7.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
