"""Shared shard sets (several updaters, one Ray cluster) on a real local Ray: a set is only ever
whole or remade, and only the publishing updater makes one."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import ray

from recsim_stream.config import LearnConfig
from recsim_stream.ray_actors import RayShards, shard_name
from recsim_stream.sharding import split_by_shard

LEARN = LearnConfig(dim=8, shards=2, batch_pairs=256, seed=3)
KEYS = np.arange(1, 41, dtype=np.int64)


@pytest.fixture
def group(ray_cluster) -> str:
    """A group id of this test's own; its detached shards are killed at the end."""
    group_id = f"shared-{uuid.uuid4().hex[:8]}"
    yield group_id
    names = [shard_name(group_id, i, LEARN.shards) for i in range(LEARN.shards)]
    for name in [*names, f"{group_id}-shards-open-of-{LEARN.shards}"]:
        try:
            ray.kill(ray.get_actor(name, namespace="recsim"))
        except ValueError:
            pass


def _seed_rows(shards: RayShards) -> None:
    parts = split_by_shard(KEYS, LEARN.shards)
    vectors = np.ones((len(KEYS), LEARN.dim), dtype=np.float32)
    shards.set_initial([(KEYS[p], vectors[p]) for p in parts], None)


def _rows(shards: RayShards) -> int:
    return sum(s["rows"] for s in shards.stats())


def test_a_second_updater_joins_the_publishers_running_set(group):
    publisher = RayShards(LEARN, shared_by=group, create=True)
    _seed_rows(publisher)
    publisher.open()
    other = RayShards(LEARN, shared_by=group, create=False, wait_s=5.0)

    assert (publisher.fresh, other.fresh) == (True, False)
    assert _rows(other) == 40


def test_a_non_publisher_never_makes_shards_and_says_what_it_waits_for(group):
    with pytest.raises(TimeoutError, match="is the publishing updater"):
        RayShards(LEARN, shared_by=group, create=False, wait_s=1.0)


def test_a_restarted_publisher_joins_a_whole_running_set_without_restoring(group):
    first = RayShards(LEARN, shared_by=group, create=True)
    _seed_rows(first)
    first.open()
    again = RayShards(LEARN, shared_by=group, create=True)

    assert again.fresh is False
    assert _rows(again) == 40


def test_a_set_whose_publisher_died_before_opening_it_is_remade(group):
    first = RayShards(LEARN, shared_by=group, create=True)
    _seed_rows(first)  # ...and never opened: not restored, so not to be trained into

    with pytest.raises(TimeoutError, match="open: False"):
        RayShards(LEARN, shared_by=group, create=False, wait_s=1.0)
    remade = _remade(group)
    assert _rows(remade) == 0


def test_a_publisher_finding_part_of_a_set_remakes_all_of_it(group):
    first = RayShards(LEARN, shared_by=group, create=True)
    _seed_rows(first)
    first.open()
    ray.kill(first.actors[0])  # a shard died; shard 1 survives with its rows

    remade = _remade(group)
    assert _rows(remade) == 0  # empty, ready for the checkpoint; no survivor ahead of it
    remade.open()
    assert RayShards(LEARN, shared_by=group, create=False, wait_s=5.0).fresh is False


def _remade(group: str) -> RayShards:
    """The publisher's set once it is remade (a dead shard's name is released asynchronously)."""
    for _ in range(50):
        shards = RayShards(LEARN, shared_by=group, create=True)
        if shards.fresh:
            return shards
    raise AssertionError("the publisher never remade the set")


def test_killing_a_shared_set_frees_its_names(group):
    shards = RayShards(LEARN, shared_by=group, create=True)
    shards.open()
    shards.kill()

    assert RayShards(LEARN, shared_by=group, create=True).fresh is True
