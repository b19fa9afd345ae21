"""Cost of encoding newly listed items for the content tower, per item: what the updater pays to
serve a listed catalogue as cold rows.

    .venv/bin/python scripts/encode_cost.py --items 100000 --chunk 3000 --repeats 3
    .venv/bin/python scripts/encode_cost.py --source rees46 --profile

Items are the simulator's catalogue (``--source sim``, as ``recsim-stream bench e2e`` lists it) or the
REES46 head's items (``--source rees46``, read in place from ``../shared/data``). Each repeat encodes
the items in chunks of ``--chunk`` (as the updater does) with fresh caches, so every distinct title,
category and price is met for the first time once per repeat. Prints the median over repeats of
microseconds per item, for the feature sketch alone, the whole feature extraction, and
``ContentTower.encode_unit`` (extraction + the tower's forward pass); ``--profile`` adds a cProfile
of one ``encode_unit`` pass, top 25 by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recsim_stream import content_features
from recsim_stream.config import ContentConfig, SimConfig
from recsim_stream.content import ContentTower
from recsim_stream.content_features import FIELDS
from recsim_stream.datasets import read_rees46_items
from recsim_stream.events import ItemMeta
from recsim_stream.sim.catalogue import Catalogue

REES46 = Path(__file__).resolve().parents[1] / "../shared/data/rees46-multicat-oct2019-head/events.csv"


def load_items(source: str, count: int, seed: int) -> list[ItemMeta]:
    if source == "sim":
        config = SimConfig(items=count, seed=seed)
        return Catalogue.generate(config, np.random.default_rng(seed)).items
    if not REES46.exists():
        sys.exit(f"encode_cost: REES46 data not found at {REES46}")
    return read_rees46_items(REES46)[:count]


def clear_caches(tower: ContentTower) -> None:
    """Forget every cache of content_features and the tower's title cache, so that a repeat meets
    each title, token and value afresh, as a catalogue listed for the first time does."""
    for value in vars(content_features).values():
        if isinstance(value, functools._lru_cache_wrapper):
            value.cache_clear()
    tower.features.text_cache._entries.clear()


def per_item_us(
    tower: ContentTower, items: Sequence[ItemMeta], chunk: int, encode: Callable[[Sequence[ItemMeta]], object]
) -> float:
    clear_caches(tower)
    started = time.perf_counter()
    for start in range(0, len(items), chunk):
        encode(items[start : start + chunk])
    return (time.perf_counter() - started) / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("sim", "rees46"), default="sim")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64, help="learned dim (the tower outputs 2 x dim)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    items = load_items(args.source, args.items, args.seed)
    config = ContentConfig()
    tower = ContentTower(config, 2 * args.dim, torch_threads=1)
    extractor, sketch = tower.features, tower.features.sketch
    assert sketch is not None

    def sketch_only(chunk: Sequence[ItemMeta]) -> object:
        return sketch.encode(chunk, np.zeros((len(chunk), len(FIELDS)), dtype=bool))

    stages = {"sketch": sketch_only, "extract": extractor.extract, "encode_unit": tower.encode_unit}
    figures = {
        name: [per_item_us(tower, items, args.chunk, f) for _ in range(args.repeats)]
        for name, f in stages.items()
    }
    print(f"{len(items):,} {args.source} items, chunks of {args.chunk:,}, {args.repeats} repeats")
    for name, runs in figures.items():
        print(
            f"  {name:12s} median {statistics.median(runs):6.2f} us/item  (runs {', '.join(f'{r:.2f}' for r in runs)})"
        )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(per_item_us, tower, items, args.chunk, tower.encode_unit)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
