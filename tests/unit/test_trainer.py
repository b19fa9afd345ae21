import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import LearnConfig
from recsim_stream.pairs import PairBatch
from recsim_stream.sampler import NegativeSampler
from recsim_stream.shard import ParameterShard
from recsim_stream.trainer import PIECES_PER_CALL, Segment, SgnsTrainer, local_shard_calls

CLUSTERS, PER_CLUSTER = 8, 25


def _planted(rng: np.random.Generator, n: int) -> PairBatch:
    """Pairs only inside clusters of PER_CLUSTER consecutive keys."""
    centers = rng.integers(0, CLUSTERS * PER_CLUSTER, n)
    contexts = (centers // PER_CLUSTER) * PER_CLUSTER + rng.integers(0, PER_CLUSTER, n)
    keep = centers != contexts
    return PairBatch(centers[keep], contexts[keep], np.ones(int(keep.sum()), np.float32))


def _train(config: LearnConfig, steps: int) -> tuple[list[ParameterShard], list[float]]:
    shards = [ParameterShard(config, i) for i in range(config.shards)]
    trainer = SgnsTrainer(config, NegativeSampler(config), *local_shard_calls(shards))
    rng = np.random.default_rng(5)
    losses = []
    for step in range(steps):
        batch = _planted(rng, 1000)
        losses.append(trainer.step(batch, tokens=batch.centers, ts=float(step)).loss)
    return shards, losses


def _merged(shards: list[ParameterShard]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    exports = [s.export() for s in shards]
    keys = np.concatenate([e.keys for e in exports])
    order = np.argsort(keys)
    return (
        keys[order],
        np.concatenate([e.input for e in exports])[order],
        np.concatenate([e.output for e in exports])[order],
    )


CONFIG = LearnConfig(dim=16, shards=2, negative_pool=256)


def test_loss_falls_and_neighbours_share_the_cluster():
    shards, losses = _train(CONFIG, 60)
    keys, inputs, outputs = _merged(shards)
    unit = inputs / np.linalg.norm(inputs, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    nearest = np.argsort(-cosine, axis=1)[:, :10]
    purity = (keys[nearest] // PER_CLUSTER == (keys // PER_CLUSTER)[:, None]).mean()
    assert losses[-1] < 0.5 * losses[0]
    assert purity > 0.9


def test_result_does_not_depend_on_the_number_of_shards():
    one, _ = _train(LearnConfig(dim=16, shards=1, negative_pool=256), 5)
    three, _ = _train(LearnConfig(dim=16, shards=3, negative_pool=256), 5)
    a, b = _merged(one), _merged(three)
    assert a[0].tolist() == b[0].tolist()
    assert np.allclose(a[1], b[1], atol=1e-6) and np.allclose(a[2], b[2], atol=1e-6)


def test_each_pair_counts_once_for_its_center_and_once_for_its_context():
    shards = [ParameterShard(CONFIG, i) for i in range(2)]
    trainer = SgnsTrainer(CONFIG, NegativeSampler(CONFIG), *local_shard_calls(shards))
    batch = PairBatch(np.array([1, 1, 2]), np.array([2, 3, 3]), np.ones(3, np.float32))
    result = trainer.step(batch, tokens=np.array([1, 2, 3]))
    counts = {int(k): int(c) for s in shards for k, c in zip(s.export().keys, s.export().counts, strict=True)}
    assert (result.pairs, {k: counts[k] for k in (1, 2, 3)}) == (3, {1: 2, 2: 2, 3: 2})


def test_empty_batch_trains_nothing():
    shards = [ParameterShard(CONFIG, i) for i in range(2)]
    trainer = SgnsTrainer(CONFIG, NegativeSampler(CONFIG), *local_shard_calls(shards))
    empty = PairBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert trainer.step(empty).pairs == 0
    assert [s.version for s in shards] == [0, 0]


def _recording_calls(shards: list[ParameterShard], log: list[str]):
    pull, push = local_shard_calls(shards)

    def recorded_pull(parts):
        log.append(f"pull {sum(len(i) for pieces in parts for i, _ in pieces)}")  # centers: one a piece here
        return pull(parts)

    def recorded_push(updates):
        log.append(f"push {len(updates)}")
        return push(updates)

    return recorded_pull, recorded_push


def test_pieces_go_in_pairs_each_pair_pulled_before_the_pair_before_it_is_pushed():
    """Five pieces of one pair: (0, 1) and (2, 3) pulled at once, (4) pulled with (0, 1)'s push."""
    config = LearnConfig(dim=8, shards=2, batch_pairs=1, negative_pool=4)
    log: list[str] = []
    shards = [ParameterShard(config, i) for i in range(2)]
    trainer = SgnsTrainer(config, NegativeSampler(config), *_recording_calls(shards, log))
    batch = PairBatch(np.array([1, 2, 3, 4, 5]), np.array([2, 3, 4, 5, 1]), np.ones(5, np.float32))
    result = trainer.step(batch, tokens=np.arange(1, 6))
    assert PIECES_PER_CALL == 2
    assert log == ["pull 2", "pull 2", "push 2", "pull 1", "push 2", "push 1"]
    # Five pushes, and two pulls that created rows in each shard.
    assert (result.pairs, [s.version for s in shards]) == (5, [7, 7])


def test_a_piece_pulls_only_the_rows_it_reads():
    """Input rows of centers, output rows of contexts and negatives."""
    config = LearnConfig(dim=8, shards=2, batch_pairs=2, negative_pool=0)
    shards = [ParameterShard(config, i) for i in range(2)]
    pull, push = local_shard_calls(shards)
    pulled: list[tuple[set[int], set[int]]] = []

    def recorded_pull(parts):
        pieces = [piece for shard in parts for piece in shard]
        pulled.append(({int(k) for i, _ in pieces for k in i}, {int(k) for _, o in pieces for k in o}))
        return pull(parts)

    sampler = NegativeSampler(config)
    sampler.observe(np.array([100]))  # every negative is key 100
    batch = PairBatch(np.array([1, 2, 2, 4]), np.array([2, 3, 5, 6]), np.ones(4, np.float32))
    SgnsTrainer(config, sampler, recorded_pull, push).step(batch)
    assert pulled == [({1, 2, 4}, {2, 3, 5, 6, 100})]  # both pieces in one pull


def test_a_batch_a_little_over_batch_pairs_is_trained_whole():
    config = LearnConfig(dim=8, shards=2, batch_pairs=4, negative_pool=4)
    log: list[str] = []
    shards = [ParameterShard(config, i) for i in range(2)]
    trainer = SgnsTrainer(config, NegativeSampler(config), *_recording_calls(shards, log))
    batch = PairBatch(np.array([1, 2, 3, 4, 5]), np.array([2, 3, 4, 5, 1]), np.ones(5, np.float32))
    trainer.step(batch, tokens=np.arange(1, 6))
    assert log == ["pull 5", "push 1"]


@settings(max_examples=40, deadline=None)
@given(
    keys=st.integers(4, 60),
    pairs=st.integers(1, 80),
    batch_pairs=st.integers(1, 12),
    shards=st.integers(1, 3),
    pool=st.sampled_from([0, 4]),
    seed=st.integers(0, 2**16),
)
def test_one_big_batch_equals_its_pieces_one_by_one(keys, pairs, batch_pairs, shards, pool, seed):
    """Pieces overlap (each pulled before the previous push; shared rows carried and replayed), yet
    the tables end bit for bit as if every piece had been its own step."""
    config = LearnConfig(dim=8, shards=shards, batch_pairs=batch_pairs, negative_pool=pool)
    rng = np.random.default_rng(seed)
    centers = rng.integers(0, keys, pairs)
    contexts = (centers + rng.integers(1, keys, pairs)) % keys
    batch = PairBatch(centers, contexts, rng.choice(np.array([0.5, 1.0, 2.0], np.float32), pairs))
    whole = [ParameterShard(config, i) for i in range(shards)]
    whole_trainer = SgnsTrainer(config, NegativeSampler(config), *local_shard_calls(whole))
    for _ in range(2):  # the second step starts from trained rows
        whole_trainer.step(batch, tokens=batch.centers, ts=1.0)
    one_by_one = [ParameterShard(config, i) for i in range(shards)]
    trainer = SgnsTrainer(config, NegativeSampler(config), *local_shard_calls(one_by_one))
    pieces = max(1, int(pairs / batch_pairs + 0.5))
    bounds = [pairs * i // pieces for i in range(pieces + 1)]
    for _ in range(2):
        trainer.sampler.observe(batch.centers)
        for lo, hi in itertools.pairwise(bounds):
            trainer.step(PairBatch(centers[lo:hi], contexts[lo:hi], batch.weights[lo:hi]), ts=1.0)
    a, b = _merged(whole), _merged(one_by_one)
    assert a[0].tolist() == b[0].tolist()
    assert a[1].tobytes() == b[1].tobytes() and a[2].tobytes() == b[2].tobytes()
    accumulators = [[s._acc_in[: s._used].tobytes(), s._acc_out[: s._used].tobytes()] for s in whole]
    assert accumulators == [
        [s._acc_in[: s._used].tobytes(), s._acc_out[: s._used].tobytes()] for s in one_by_one
    ]


def test_a_steps_loss_is_its_largest_pieces_mean_per_pair():
    config = LearnConfig(dim=8, shards=2, batch_pairs=400, negative_pool=64)
    shards = [ParameterShard(config, i) for i in range(config.shards)]
    trainer = SgnsTrainer(config, NegativeSampler(config), *local_shard_calls(shards))
    batch = _planted(np.random.default_rng(2), 520)
    n = len(batch.centers)
    # Two segments: ~400 pairs (one piece) and a trailing sliver of 20 (its own piece).
    result = trainer.step(
        batch, segments=[Segment(n - 20, batch.centers[:100], 1.0), Segment(n, batch.centers[100:], 2.0)]
    )
    sizes = [len(piece.weights) for piece in result.piece_losses]
    assert sorted(sizes) == [20, n - 20]
    largest = result.piece_losses[sizes.index(n - 20)]
    assert result.loss == largest.value / (n - 20)
    assert result.loss > 0
