"""Training speed of the SGNS path against gensim's Cython loop, on the same sessions.

Both see the same synthetic sessions (Zipf popularity inside clusters, as in real catalogues), the same
window (5), negatives (5) and dimension (64). gensim's work is counted as the pairs it updates in
expectation: word2vec samples a reduced window b ~ U{1..window} per position, so a position pairs
with min(b, i) + min(b, L-1-i) others, about 0.66x the full window. Ours counts every pair it trains,
and trains every window pair of the sessions once (gensim makes one pass over them too), on fresh
shards whose rows are created as keys arrive: timing only a prefix (the first 327,680 pairs, until
the tenth session) charged the row creation of most of the catalogue to a fifth of the work.
The ratio of the two pairs/s, measured in one run, is the figure that matters on a shared machine;
the ratio of CPU time per pair (every process involved, Ray's shard actors included) moves less with
the other load there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from recsim_stream.config import LearnConfig
from recsim_stream.pairs import PairBatch
from recsim_stream.sampler import NegativeSampler
from recsim_stream.shard import ParameterShard
from recsim_stream.trainer import ExchangeFn, PullFn, PushFn, SgnsTrainer, local_shard_calls

if TYPE_CHECKING:
    from recsim_stream.ray_actors import RayShards

WINDOW = 5


def zipf_sessions(tokens: int, items: int = 100_000, clusters: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Sessions of 2-15 items from one cluster each (10% noise), Zipf popularity within and across clusters."""
    rng = np.random.default_rng(seed)
    per = items // clusters
    cluster_p = 1 / np.arange(1, clusters + 1) ** 0.8
    cluster_p /= cluster_p.sum()
    item_p = 1 / np.arange(1, per + 1, dtype=np.float64)
    item_p /= item_p.sum()
    sessions, total = [], 0
    while total < tokens:
        length = int(rng.integers(2, 16))
        session = rng.choice(clusters, p=cluster_p) * per + rng.choice(per, length, p=item_p)
        noise = rng.random(length) < 0.1
        session[noise] = rng.integers(0, items, int(noise.sum()))
        sessions.append(session)
        total += length
    return sessions


def window_pairs(sessions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every (center, context) pair within the window, both directions."""
    centers, contexts = [], []
    for s in sessions:
        for offset in range(1, min(WINDOW, len(s) - 1) + 1):
            centers += [s[:-offset], s[offset:]]
            contexts += [s[offset:], s[:-offset]]
    return np.concatenate(centers).astype(np.int64), np.concatenate(contexts).astype(np.int64)


def gensim_expected_pairs(sessions: list[np.ndarray]) -> float:
    total = 0.0
    for s in sessions:
        i = np.arange(len(s))
        for b in range(1, WINDOW + 1):
            total += (np.minimum(b, i) + np.minimum(b, len(s) - 1 - i)).sum() / WINDOW
    return total


class Speed(NamedTuple):
    pairs_per_s: float  # wall clock
    cpu_us_per_pair: float  # CPU of every process involved: steadier than wall time on a shared machine


class ShardCalls(NamedTuple):
    pull: PullFn
    push: PushFn
    exchange: ExchangeFn | None
    barrier: Callable[[], object]  # returns once every push is applied
    cpu_s: Callable[[], float]  # CPU seconds the shards have used outside this process so far


def sgns_speed(
    config: LearnConfig,
    make_calls: Callable[[], ShardCalls],
    tokens: np.ndarray,
    centers: np.ndarray,
    contexts: np.ndarray,
    pairs: int | None = None,
) -> Speed:
    """Speed of sample -> pull -> step -> push over fresh shards (rows created as keys arrive), fed
    as the learner feeds it (``train_batches`` batches per step), timed until every push is applied;
    over the first ``pairs`` pairs, or all of them."""
    sampler = NegativeSampler(config)
    sampler.observe(tokens)
    calls = make_calls()
    trainer = SgnsTrainer(config, sampler, calls.pull, calls.push, calls.exchange)
    size = config.batch_pairs * config.train_batches
    n = len(centers) if pairs is None else min(len(centers), pairs)
    ones = np.ones(size, dtype=np.float32)
    cpu, shards_cpu, started = time.process_time(), calls.cpu_s(), time.perf_counter()
    for s in range(0, n, size):
        c = centers[s : min(s + size, n)]
        trainer.step(PairBatch(c, contexts[s : s + len(c)], ones[: len(c)]), ts=0.0)
    calls.barrier()
    wall = time.perf_counter() - started
    used = time.process_time() - cpu + calls.cpu_s() - shards_cpu
    return Speed(n / wall, used / n * 1e6)


def gensim_speed(sessions: list[np.ndarray], seed: int) -> Speed:
    from gensim.models import Word2Vec  # a bench dependency only

    sentences = [[str(x) for x in s] for s in sessions]
    model = Word2Vec(
        vector_size=64, window=WINDOW, sg=1, negative=5, workers=1, min_count=1, sample=0, seed=seed
    )
    model.build_vocab(sentences)
    pairs = gensim_expected_pairs(sessions)
    cpu, started = time.process_time(), time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=1)
    return Speed(pairs / (time.perf_counter() - started), (time.process_time() - cpu) / pairs * 1e6)


def local_calls(config: LearnConfig) -> ShardCalls:
    pull, push = local_shard_calls([ParameterShard(config, i) for i in range(config.shards)])
    # In process: nothing to wait for, and this process's CPU time already counts the shards.
    return ShardCalls(pull, push, None, lambda: None, lambda: 0.0)


def ray_calls(shards: RayShards) -> ShardCalls:
    def cpu_s() -> float:
        import ray

        return sum(
            ray.get([a.__ray_call__.remote(lambda _shard: time.process_time()) for a in shards.actors])
        )

    return ShardCalls(shards.pull, shards.push, shards.exchange, shards.barrier, cpu_s)


def run(repeats: int = 3, with_ray: bool = True, log: Callable[[str], None] = print) -> dict:
    """Median pairs/s of gensim and of our path (in-process shards, and Ray shards) and their ratios."""
    sessions = zipf_sessions(400_000)
    centers, contexts = window_pairs(sessions)
    order = np.random.default_rng(1).permutation(len(centers))
    centers, contexts = centers[order], contexts[order]
    tokens = np.concatenate(sessions)
    config = LearnConfig(dim=64, negatives=5, shards=2)
    log(f"bench learner: {len(sessions):,} sessions, {len(tokens):,} tokens, {len(centers):,} window pairs")
    results: dict[str, list[Speed]] = {"gensim": [], "sgns_local": [], "sgns_ray": []}
    shards_ray = None
    if with_ray:
        from recsim_stream.config import RayConfig
        from recsim_stream.ray_actors import RayShards, init_ray

        init_ray(RayConfig())
    for rep in range(repeats):
        results["gensim"].append(gensim_speed(sessions, seed=rep))
        results["sgns_local"].append(
            sgns_speed(config, lambda: local_calls(config), tokens, centers, contexts)
        )
        if with_ray:
            if shards_ray is not None:
                shards_ray.kill()
            shards_ray = RayShards(config)
            results["sgns_ray"].append(
                sgns_speed(config, lambda s=shards_ray: ray_calls(s), tokens, centers, contexts)
            )
        log(
            f"bench learner: run {rep + 1}/{repeats}: "
            + ", ".join(
                f"{name} {v[-1].pairs_per_s / 1e6:.3f}M pairs/s ({v[-1].cpu_us_per_pair:.2f} us CPU/pair)"
                for name, v in results.items()
                if v
            )
        )
    if shards_ray is not None:
        shards_ray.kill()
    rate = {name: statistics.median(s.pairs_per_s for s in v) for name, v in results.items() if v}
    cpu = {name: statistics.median(s.cpu_us_per_pair for s in v) for name, v in results.items() if v}
    out: dict[str, float] = {f"{name}_pairs_per_s": round(v) for name, v in rate.items()}
    out.update({f"{name}_cpu_us_per_pair": round(v, 2) for name, v in cpu.items()})
    for name in ("sgns_local", "sgns_ray"):
        if name in rate:
            out[f"{name}_vs_gensim"] = round(rate[name] / rate["gensim"], 3)
            # gensim's CPU per pair over ours: the same comparison, less at the mercy of other load
            out[f"{name}_vs_gensim_cpu"] = round(cpu["gensim"] / cpu[name], 3)
    return out
