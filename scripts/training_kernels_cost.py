"""Time the training path's hot functions on synthetic batches of the sizes eval's learner meets, to
compare two versions of the code (run it from each, a worktree and ``PYTHONPATH``, in turns):

    .venv/bin/python scripts/training_kernels_cost.py --repeats 50

- ``sgns_step`` on pieces of MovieLens's size (4,600 pairs over 700 input and 2,500 output rows), a
  larger one and REES46's (2,600 pairs, more distinct rows); dim 64, 5 negatives, float32;
- ``KeyIndex.insert`` of 2,000 / 10,000 / 1M keys into an empty index, then ``get`` of 3,000-5,000
  keys, half of them present;
- the trainer's key grouping (``trainer._side``: distinct keys, grouped by shard) of 6,600 keys with
  1,700 or 6,000 distinct, over 2 shards;
- ``NegativeSampler.observe`` of 3,000 Zipf tokens and ``sample_pool`` of 2,048 keys for 4,600 pairs,
  on a sampler that has seen 60 such batches;
- ``ContentTower.train_step`` on 256 pairs of the simulator's catalogue (2,000 items), dim 128 (the
  tower's output for learner dim 64), after three untimed steps; and a fresh tower's first step, the
  items' features already extracted (its optimizers' state is made then).

Prints the median milliseconds of each, one line each. Seeds are fixed, so both versions time the
same inputs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from recsim_stream.config import ContentConfig, LearnConfig, SimConfig
from recsim_stream.content import ContentTower
from recsim_stream.sampler import NegativeSampler
from recsim_stream.sgns import sgns_step
from recsim_stream.sharding import KeyIndex
from recsim_stream.sim.catalogue import Catalogue
from recsim_stream.trainer import _side


def median_ms(repeats: int, fn: Callable[..., object], *args: object) -> float:
    fn(*args)  # once untimed: first-touch allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def fill_index(keys: np.ndarray) -> KeyIndex:
    index = KeyIndex()
    index.insert(keys, np.arange(len(keys)))
    return index


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=50)
    repeats = parser.parse_args().repeats
    rng = np.random.default_rng(0)

    for pairs, inputs, outputs in [(4600, 700, 2500), (7000, 900, 2900), (2600, 1500, 3000)]:
        in_rows = rng.normal(0, 0.3, (inputs, 64)).astype(np.float32)
        out_rows = rng.normal(0, 0.3, (outputs, 64)).astype(np.float32)
        centers, contexts = rng.integers(0, inputs, pairs), rng.integers(0, outputs, pairs)
        negatives, weights = rng.integers(0, outputs, (pairs, 5)), rng.random(pairs).astype(np.float32)
        ms = median_ms(repeats, sgns_step, in_rows, out_rows, centers, contexts, negatives, weights)
        print(f"sgns_step {pairs} pairs ({inputs} x {outputs} rows): {ms:.3f} ms")

    for size, asked in [(2000, 3000), (10000, 5000), (1_000_000, 5000)]:
        keys = rng.integers(-(2**62), 2**62, size)
        fill = median_ms(max(3, repeats // 10), fill_index, keys)
        index = fill_index(keys)
        probe = np.concatenate(
            [rng.choice(keys, asked // 2), rng.integers(-(2**62), 2**62, asked - asked // 2)]
        )
        ms = median_ms(repeats, index.get, probe)
        print(f"KeyIndex {size} keys: insert {fill:.3f} ms, get {asked}: {ms:.3f} ms")

    for raw, kinds in [(6600, 1700), (6600, 6000)]:
        keys = rng.integers(-(2**63), 2**63 - 1, kinds)[rng.integers(0, kinds, raw)]
        ms = median_ms(repeats, _side, keys, 2)
        print(f"trainer._side {raw} keys ({kinds} distinct), 2 shards: {ms:.3f} ms")

    sampler = NegativeSampler(LearnConfig())
    batches = [(rng.zipf(1.3, 3000) % 50_000).astype(np.int64) * 7919 for _ in range(61)]
    for batch in batches[:60]:
        sampler.observe(batch)
    ms = median_ms(repeats, sampler.observe, batches[60])
    print(f"NegativeSampler.observe 3000 tokens: {ms:.3f} ms")
    ms = median_ms(repeats, sampler.sample_pool, 4600, 5, 2048)
    print(f"NegativeSampler.sample_pool 2048 for 4600 pairs: {ms:.3f} ms")

    items = Catalogue.generate(SimConfig(items=2000, seed=1), np.random.default_rng(1)).items
    tower = ContentTower(ContentConfig(), 128)

    def tower_step() -> None:
        left, right = rng.integers(0, len(items), 256), rng.integers(0, len(items), 256)
        vectors = rng.normal(size=(2, 256, 128)).astype(np.float32)
        tower.train_step([items[i] for i in left], [items[i] for i in right], vectors[0], vectors[1])

    for _ in range(2):
        tower_step()
    ms = median_ms(max(3, repeats // 2), tower_step)
    print(f"ContentTower.train_step 256 pairs: {ms:.3f} ms")

    # A fresh tower's first step (the optimizers' state is made then): what a short stream pays.
    batch = rng.integers(0, len(items), (2, 256))
    vectors = rng.normal(size=(2, 256, 128)).astype(np.float32)
    pairs = ([items[i] for i in batch[0]], [items[i] for i in batch[1]], vectors[0], vectors[1])
    firsts = []
    for _ in range(max(3, repeats // 10)):
        fresh = ContentTower(ContentConfig(), 128)
        fresh.features.extract(pairs[0] + pairs[1])  # the items' features cached, as in the steady steps
        started = time.perf_counter()
        fresh.train_step(*pairs)
        firsts.append(time.perf_counter() - started)
    print(
        f"ContentTower.train_step 256 pairs, a fresh tower's first: {statistics.median(firsts) * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
