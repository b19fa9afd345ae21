"""When the updater expires rows: once event time has moved a 64th of ``learn.expire_after_s`` since
the last expiry (``EXPIRY_STEPS``), not at every snapshot, since each is a round trip to every shard
and a scan of its rows. What expiry does is tested with real shards in the integration tests."""

from __future__ import annotations

import numpy as np

from recsim_stream.config import Config, LearnConfig
from recsim_stream.learner import Learner
from recsim_stream.metrics import UpdaterMetrics, new_registry
from recsim_stream.shard import ParameterShard
from recsim_stream.trainer import local_shard_calls
from recsim_stream.updater import EXPIRY_STEPS, Updater

WINDOW_S = 6400.0  # a 64th: 100 s


class _Shards:
    """In-process shards that record when they are asked to expire (and expire nothing)."""

    def __init__(self, learn: LearnConfig) -> None:
        self.pull, self.push = local_shard_calls([ParameterShard(learn, 0)])
        self.asked: list[float] = []

    def expire(self, now: float) -> np.ndarray:
        self.asked.append(now)
        return np.zeros(0, np.int64)


class _NoSource:
    def set_revoke_handler(self, handler) -> None:
        pass


def _updater(window_s: float) -> tuple[Updater, _Shards]:
    config = Config(learn=LearnConfig(dim=4, shards=1, expire_after_s=window_s))
    shards = _Shards(config.learn)
    learner = Learner(config, shards.pull, shards.push)
    return Updater(config, _NoSource(), None, learner, shards, None, UpdaterMetrics(new_registry())), shards


def test_the_shards_are_asked_once_event_time_moved_a_64th_of_the_window():
    updater, shards = _updater(WINDOW_S)
    step = WINDOW_S / EXPIRY_STEPS
    for newest in (1000.0, 1000.0 + step / 2, 1000.0 + step, 1000.0 + 1.5 * step, 1000.0 + 2.5 * step):
        updater.learner.newest_ts = newest
        updater.expire()
    assert shards.asked == [1000.0, 1000.0 + step, 1000.0 + 2.5 * step]


def test_without_a_window_or_an_event_the_shards_are_never_asked():
    updater, shards = _updater(0.0)
    updater.learner.newest_ts = 1e9
    updater.expire()
    updater, idle = _updater(WINDOW_S)  # no event yet: newest_ts is -inf
    updater.expire()
    assert shards.asked == idle.asked == []
