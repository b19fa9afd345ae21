import numpy as np

from recsim_stream.config import Config, LearnConfig, PairConfig
from recsim_stream.events import Event, EventKind
from recsim_stream.learner import Learner
from recsim_stream.shard import ParameterShard
from recsim_stream.trainer import local_shard_calls


def _learner(train_batches: int) -> Learner:
    learn = LearnConfig(
        dim=8, shards=2, batch_pairs=4, train_batches=train_batches, sampler_table_size=1 << 10
    )
    config = Config(learn=learn, pairs=PairConfig(window=1))
    return Learner(config, *local_shard_calls([ParameterShard(learn, i) for i in range(2)]))


def _add_session(learner: Learner, items: list[str]) -> None:
    for i, item in enumerate(items):
        learner.add(Event("u", item, EventKind.CLICK, float(i), "s"))


def test_ready_waits_for_train_batches_batches_of_pairs():
    one, two = _learner(1), _learner(2)
    for learner in (one, two):
        _add_session(learner, ["a", "b", "c"])  # window 1: two pairs per new item after the first
    assert (len(one.pairs), one.ready(), two.ready()) == (4, True, False)


def test_train_trains_every_pending_pair():
    learner = _learner(2)
    _add_session(learner, ["a", "b", "c", "d", "e", "f"])
    result = learner.train()
    assert (result.pairs, len(learner.pairs), learner.pairs_trained) == (10, 0, 10)
    assert np.isfinite(result.loss)
