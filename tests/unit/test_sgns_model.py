"""The eval learner keeps its steps until publish: the same served state as learning each at once."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from recsim_stream import sgns_model
from recsim_stream.config import Config, EvalConfig
from recsim_stream.evaluate import EvalResult, Step, evaluate
from recsim_stream.events import Event, EventKind, ItemMeta
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
