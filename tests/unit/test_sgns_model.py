"""The eval learner keeps its steps until publish: the same served state as learning each at once."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from recsim_stream import sgns_model
from recsim_stream.config import Config, EvalConfig
from recsim_stream.evaluate import EvalResult, Step, evaluate
from recsim_stream.events import Event, EventKind, ItemMeta
from recsim_stream.scoring import Embeddings
from recsim_stream.sgns_model import SgnsStreamModel


def _stream() -> tuple[list[Event], list[ItemMeta]]:
    """Users browsing within one of four categories; some carts and purchases, some unlisted items."""
    rng = random.Random(7)
    items = [
        ItemMeta(f"i{n}", f"item {n} of group {n % 4}", f"shop.group{n % 4}", float(10 + n))
        for n in range(40)
    ]
    events, ts = [], 0.0
    for session in range(120):
        group = rng.randrange(4)
        for _ in range(rng.randrange(2, 9)):
            ts += rng.random() * 5
            n = 4 * rng.randrange(12) + group  # items 40-47 are not listed: learned, never encoded
            kind = rng.choice([EventKind.CLICK] * 8 + [EventKind.CART, EventKind.PURCHASE])
            events.append(Event(f"u{session % 30}", f"i{n}", kind, ts, f"s{session}"))
    return events, items


def _config() -> Config:
    """Small batches, so that SGNS and the tower train between publishes as well as at them."""
    config = Config()
    return dataclasses.replace(
        config,
        learn=dataclasses.replace(config.learn, batch_pairs=64, train_batches=2),
        content=dataclasses.replace(config.content, train_batch=16, train_pairs_per_event=0.5),
    )


class _AtOnce(SgnsStreamModel):
    """The learner as eval drove it before ``learn`` kept steps: each step taken in when it comes."""

    def learn(self, step: Step) -> None:
        learner = self.learner
        if self.cold_start is not None and not step.repeat and not learner.items.known(step.item_id):
            self.cold_start.record_new_item(step.prefix, step.item_id)
        learner.add(step)
        if learner.ready():
            self._train()


def _run(model_class: type[SgnsStreamModel]) -> tuple[SgnsStreamModel, EvalResult]:
    events, items = _stream()
    model = model_class(_config())
    result = evaluate(events, [model], EvalConfig(refresh_every=100), items)
    return model, result


def test_kept_steps_serve_what_learning_each_step_at_once_serves():
    at_once, at_once_result = _run(_AtOnce)
    kept, kept_result = _run(SgnsStreamModel)
    assert kept.learner.pairs_trained == at_once.learner.pairs_trained > 0
    assert kept.cold_start.tower.steps == at_once.cold_start.tower.steps > 0
    assert kept.served.ids == at_once.served.ids
    for table in ("inputs", "outputs", "content"):
        np.testing.assert_array_equal(getattr(kept.served, table), getattr(at_once.served, table))
    assert kept.cold_start.temperature.value == at_once.cold_start.temperature.value
    assert list(kept_result.models[0].ranks) == list(at_once_result.models[0].ranks)


def test_steps_wait_for_publish_or_a_full_buffer(monkeypatch):
    monkeypatch.setattr(sgns_model, "PENDING_STEPS", 3)
    events, items = _stream()
    model = SgnsStreamModel(_config())
    model.observe_items(items)
    model.publish()
    steps = [
        Step(n, e.session_id, e.user_id, (), e.item_id, e.kind, e.ts, False) for n, e in enumerate(events)
    ]
    model.learn(steps[0])
    model.learn(steps[1])
    assert model.learner.events_added == 0
    model.learn(steps[2])
    assert model.learner.events_added == 3
    model.learn(steps[3])
    model.publish()
    assert model.learner.events_added == 4


class _Previous(SgnsStreamModel):
    """The eval learner's publish before it kept its rows' names and pulled the tower's rows: every
    row named at every publish, the tower trained on all learned rows."""

    def publish(self) -> None:
        self._learn_pending()
        self._train()
        exports = [shard.export() for shard in self.shards]
        ids = self.learner.items.name_array(np.concatenate([e.keys for e in exports]))
        inputs = np.concatenate([e.input for e in exports])
        outputs = np.concatenate([e.output for e in exports])
        counts = np.concatenate([e.counts for e in exports])
        self.cold_start.calibrate(self.served)
        events = self.learner.events_added - self._events_at_publish
        self._events_at_publish = self.learner.events_added
        if self.cold_start.reservoir.left:
            self.cold_start.train(events, dict(zip(ids, range(len(ids)), strict=True)), inputs, outputs)
        rows = self.cold_start.complete(ids, inputs, outputs, counts)
        self.served = Embeddings(
            rows.ids,
            rows.inputs,
            rows.outputs,
            rows.counts,
            popularity_power=self.config.learn.sampler_power,
            revisit_share=self.learner.revisits.value,
            cold=rows.cold,
            new_item_share=self.learner.new_items.value,
            content=rows.content,
            cold_temperature=self.cold_start.temperature.value,
            new_item_share_after_cold=self.learner.new_items_after_cold.value,
        )
        self.learner.mark_published()


def test_kept_names_and_pulled_tower_rows_serve_what_the_previous_publish_served():
    previous, previous_result = _run(_Previous)
    current, current_result = _run(SgnsStreamModel)
    assert current.cold_start.tower.steps == previous.cold_start.tower.steps > 5
    assert current.served.ids == previous.served.ids
    for table in ("inputs", "outputs", "counts", "cold", "content"):
        np.testing.assert_array_equal(getattr(current.served, table), getattr(previous.served, table))
    assert current.cold_start.tower.state().keys() == previous.cold_start.tower.state().keys()
    for key, value in previous.cold_start.tower.state().items():
        np.testing.assert_array_equal(current.cold_start.tower.state()[key], value)
    assert list(current_result.models[0].ranks) == list(previous_result.models[0].ranks)


def test_rows_named_again_when_a_shards_rows_are_not_the_last_ones_extended():
    model = SgnsStreamModel(_config())
    keys = [model.learner.items.key(f"i{n}") for n in range(4)]
    exports = [
        [dataclasses.replace(model.shards[0].export(), keys=np.array(k, np.int64)), model.shards[1].export()]
        for k in ([keys[0], keys[1]], [keys[0], keys[1], keys[2]], [keys[1], keys[3]])
    ]
    assert [model._names(e) for e in exports] == [["i0", "i1"], ["i0", "i1", "i2"], ["i1", "i3"]]
