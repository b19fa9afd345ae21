"""The Ray shard actors train exactly as in-process shards: same rows after the same batches, with
each push one argument, rows that travel in chunks under Ray's 1 MiB copy threshold, and batches
pipelined (each pulled with the push two before it, shared rows carried over)."""

from collections.abc import Iterator

import numpy as np
import pytest

from recsim_stream.config import LearnConfig
from recsim_stream.pairs import PairBatch
from recsim_stream.ray_actors import CHUNK_BYTES, RayShards
from recsim_stream.sampler import NegativeSampler
from recsim_stream.shard import ParameterShard, ShardExport
from recsim_stream.trainer import ExchangeFn, PullFn, PushFn, SgnsTrainer, local_shard_calls

pytestmark = pytest.mark.integration

# dim 64 and ~8k distinct keys per shard and batch: each table's rows (~2 MB) go in several chunks.
CONFIG = LearnConfig(dim=64, shards=2, batch_pairs=8192)
ITEMS = 20_000


@pytest.fixture
def ray_shards(ray_cluster: None) -> Iterator[RayShards]:
    shards = RayShards(CONFIG)
    yield shards
    shards.kill()


def train(
    pull: PullFn, push: PushFn, exchange: ExchangeFn | None = None, batches: int = 4, per_step: int = 1
) -> None:
    """``batches`` batches of 8,192 pairs, ``per_step`` of them in one ``step`` call (overlapped)."""
    rng = np.random.default_rng(0)
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.arange(ITEMS))
    trainer = SgnsTrainer(CONFIG, sampler, pull, push, exchange)
    centers, contexts = rng.integers(0, ITEMS, (2, batches * 8192))
    size = per_step * 8192
    for s in range(0, len(centers), size):
        trainer.step(
            PairBatch(centers[s : s + size], contexts[s : s + size], np.ones(size, np.float32)), ts=1.0
        )


def by_key(export: ShardExport) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(export.keys)
    return export.keys[order], export.input[order], export.output[order], export.counts[order]


def test_ray_shards_train_exactly_as_in_process_shards(ray_shards: RayShards) -> None:
    local = [ParameterShard(CONFIG, i) for i in range(CONFIG.shards)]
    train(*local_shard_calls(local))
    train(ray_shards.pull, ray_shards.push, ray_shards.exchange, per_step=4)
    assert 8192 * 64 * 4 > CHUNK_BYTES  # the batches' row tables are chunked on the way
    # No barrier first: an export is ordered after the pushes this process sent.
    exports = ray_shards.export([None, None])
    for remote, mine in zip(exports, local, strict=True):
        for a, b in zip(by_key(remote), by_key(mine.export()), strict=True):
            np.testing.assert_array_equal(a, b)
    # Every push acknowledged, in order, per call and shard: two batches a call, the last call's at the
    # shards' versions (pulls that create rows move a version too).
    finals = [export.version for export in exports]
    assert ray_shards.barrier() == [v - 2 for v in finals] + finals
    assert ray_shards.barrier() == []
    assert [s["pushes"] for s in ray_shards.stats()] == [4, 4]
