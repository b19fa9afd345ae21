import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import Config, LearnConfig, PairConfig
from recsim_stream.events import Event, EventKind
from recsim_stream.learner import Learner
from recsim_stream.shard import ParameterShard
from recsim_stream.trainer import SgnsTrainer, local_shard_calls


def _learner(train_batches: int) -> Learner:
    learn = LearnConfig(dim=8, shards=2, batch_pairs=4, train_batches=train_batches)
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


@settings(max_examples=30, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), min_size=1, max_size=120),
    every=st.integers(1, 4),
    train_batches=st.integers(2, 5),
)
def test_train_batches_changes_when_training_runs_not_what_it_computes(events, every, train_batches):
    """Training every batch, or train_batches of them at once (pipelined), with the caller asking
    ``ready`` at the same points and flushing at the end: the same tables, and the same pairs handed
    to the content tower in the same batches (and the same accumulators, counts, times touched)."""
    runs = []
    for batches in (1, train_batches):
        learner = _learner(batches)
        shards = [ParameterShard(learner.config.learn, i) for i in range(2)]
        learner.trainer = SgnsTrainer(learner.config.learn, learner.sampler, *local_shard_calls(shards))
        handed: list[list[int]] = []
        for i, (user, item) in enumerate(events):
            learner.add(Event(f"u{user}", f"i{item}", EventKind.CLICK, float(i), f"s{user}"))
            if i % every == 0 and learner.ready():
                learner.train()
                handed += [batch.centers.tolist() for batch in learner.last_batches]
        learner.train()
        handed += [batch.centers.tolist() for batch in learner.last_batches]
        states = [_comparable(shard.state()) for shard in shards]
        runs.append((handed, states))
    assert runs[0] == runs[1]


def _comparable(state: dict) -> dict[str, bytes]:
    """A shard's state but for what a row keeps from its creation while no push or positive pair
    has changed it since: a pipelined pull creates rows before the previous batch's push, so their
    version (``updated``) is older, and so is the event time a row that has only served as a negative
    was created at (``touched``; only positive pairs touch a row)."""
    arrays = {k: np.asarray(v) for k, v in state.items() if k != "updated"}
    arrays["touched"] = arrays["touched"][arrays["counts"] > 0]
    return {k: v.tobytes() for k, v in arrays.items()}


def test_train_trains_every_pending_pair():
    learner = _learner(2)
    _add_session(learner, ["a", "b", "c", "d", "e", "f"])
    result = learner.train()
    assert (result.pairs, len(learner.pairs), learner.pairs_trained) == (10, 0, 10)
    assert np.isfinite(result.loss)


def test_a_new_item_after_an_item_first_seen_since_the_last_publish_counts_as_after_cold():
    learner = _learner(1)
    _add_session(learner, ["a", "b"])  # b follows a, first seen since the (never) publish
    learner.mark_published()
    for i, item in enumerate(["c", "a", "d"]):  # c after nothing; a after c (fresh); d after a (published)
        learner.add(Event("v", item, EventKind.CLICK, 10.0 + i, "t"))
    after_cold, after_learned = learner.new_items_after_cold, learner.new_items
    assert (after_cold.hits, after_cold.chances, after_learned.hits, after_learned.chances) == (1, 2, 1, 1)


def test_an_item_first_seen_since_the_last_publish_is_still_new_to_the_served_state():
    learner = _learner(1)
    _add_session(learner, ["a", "b"])
    learner.mark_published()
    learner.add(Event("v", "c", EventKind.CLICK, 10.0, "t"))  # first seen, not published yet
    learner.add(Event("w", "a", EventKind.CLICK, 10.0, "x"))
    learner.add(Event("w", "c", EventKind.CLICK, 11.0, "x"))  # c after a: known, but not served as learned
    assert (learner.new_items.hits, learner.new_items.chances) == (1, 1)


def test_the_split_new_item_shares_survive_a_checkpoint():
    learner = _learner(1)
    _add_session(learner, ["a", "b", "c"])
    learner.train()
    restored = _learner(1)
    restored.restore(learner.state())
    for target in (learner, restored):
        target.add(Event("u", "d", EventKind.CLICK, 3.0, "s"))  # after c, fresh in both
    assert (restored.new_items_after_cold, restored.new_items) == (
        learner.new_items_after_cold,
        learner.new_items,
    )


def test_a_checkpoint_from_before_the_split_restores_with_no_after_cold_evidence():
    learner = _learner(1)
    _add_session(learner, ["a", "b"])
    learner.train()
    state = learner.state()
    del state["new_items_after_cold"], state["fresh"]
    restored = _learner(1)
    restored.restore(state)
    assert (restored.new_items_after_cold.chances, restored.new_items.chances) == (0, 0)
