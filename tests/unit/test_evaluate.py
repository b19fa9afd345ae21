"""The prequential protocol on tiny hand-made streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from recsim_stream.config import EvalConfig
from recsim_stream.evaluate import ModelResult, Step, _blocks, _learning, evaluate
from recsim_stream.events import Event, EventKind, ItemMeta

CLICK, PURCHASE = EventKind.CLICK, EventKind.PURCHASE


def ev(ts: float, user: str, item: str, session: str | None = "s1", kind: EventKind = CLICK) -> Event:
    return Event(user, item, kind, ts, session)


class Scripted:
    """Recommends a fixed list; records every call, and what was published when it was asked."""

    name = "SCRIPTED"

    def __init__(self, answer: Sequence[str] = ()) -> None:
        self.answer = list(answer)
        self.prefixes: list[tuple[str, ...]] = []
        self.steps: list[Step] = []
        self.learned: list[str] = []
        self.published: list[str] = []
        self.visible_at_query: list[list[str]] = []
        self.items: list[ItemMeta] = []

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        self.items = list(items)

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        self.prefixes.append(tuple(prefix))
        self.visible_at_query.append(list(self.published))
        return self.answer[:k]

    def learn(self, step: Step) -> None:
        self.steps.append(step)
        self.learned.append(step.item_id)

    def publish(self) -> None:
        self.published = list(self.learned)

    def serves(self, item_id: str) -> bool:
        return item_id in self.published


def run(events: list[Event], model: Scripted, refresh_every: int = 1000, k: int = 20):
    return evaluate(events, [model], EvalConfig(k=k, refresh_every=refresh_every))


def test_first_event_of_a_session_is_not_a_prediction() -> None:
    result = run([ev(1, "u", "a")], Scripted())
    assert len(result.positions) == 0


def test_rank_is_position_of_target_in_list() -> None:
    model = Scripted(["x", "b", "y"])
    result = run([ev(1, "u", "a"), ev(2, "u", "b")], model)
    assert list(result.models[0].ranks) == [2]


def test_target_absent_from_list_is_a_miss() -> None:
    result = run([ev(1, "u", "a"), ev(2, "u", "b")], Scripted(["x"]))
    assert list(result.models[0].ranks) == [0]


def test_only_top_k_of_a_longer_list_counts() -> None:
    result = run([ev(1, "u", "a"), ev(2, "u", "b")], Scripted(["x", "y", "b"]), k=2)
    assert list(result.models[0].ranks) == [0]


def test_hr_and_mrr_over_predictions() -> None:
    model = Scripted(["b", "x", "c"])
    result = run([ev(1, "u", "a"), ev(2, "u", "b"), ev(3, "u", "c"), ev(4, "u", "d")], model)
    summary = result.summary(result.models[0])
    assert (summary["predictions"], summary["hr@20"]) == (3, 2 / 3)
    assert summary["mrr@20"] == (1 + 1 / 3) / 3


def test_consecutive_repeat_is_not_predicted_and_is_flagged() -> None:
    model = Scripted()
    result = run([ev(1, "u", "a"), ev(2, "u", "a"), ev(3, "u", "b")], model)
    assert list(result.positions) == [2]
    assert [s.repeat for s in model.steps] == [False, True, False]


def test_repeat_purchase_is_flagged_as_purchase_and_repeat() -> None:
    model = Scripted()
    run([ev(1, "u", "a"), ev(2, "u", "a", kind=PURCHASE)], model)
    assert (model.steps[1].repeat, model.steps[1].purchase) == (True, True)


def test_prefix_collapses_consecutive_repeats_only() -> None:
    model = Scripted()
    run([ev(1, "u", "a"), ev(2, "u", "a"), ev(3, "u", "b"), ev(4, "u", "a"), ev(5, "u", "c")], model)
    assert model.prefixes == [("a",), ("a", "b"), ("a", "b", "a")]


def test_cold_when_target_never_appeared_before_anywhere() -> None:
    events = [ev(1, "u", "a", "s1"), ev(2, "v", "b", "s2"), ev(3, "u", "b", "s1"), ev(4, "u", "c", "s1")]
    result = run(events, Scripted())
    assert list(result.cold) == [0, 1]


def test_sessions_group_by_session_id_across_interleaved_users() -> None:
    model = Scripted()
    events = [ev(1, "u", "a", "s1"), ev(2, "v", "x", "s2"), ev(3, "u", "b", "s1"), ev(4, "v", "y", "s2")]
    run(events, model)
    assert model.prefixes == [("a",), ("x",)]


def test_session_key_is_the_session_id_not_the_user() -> None:
    model = Scripted()
    run([ev(1, "u", "a", "s1"), ev(2, "u", "b", "s2")], model)
    assert [s.session for s in model.steps] == ["s:s1", "s:s2"]


def test_without_session_id_a_gap_over_1800s_starts_a_new_session() -> None:
    model = Scripted()
    run([ev(0, "u", "a", None), ev(1800, "u", "b", None), ev(3601, "u", "c", None)], model)
    assert [s.session for s in model.steps] == ["u:u#0", "u:u#0", "u:u#1"]


def test_stream_is_stable_sorted_by_ts() -> None:
    model = Scripted()
    run([ev(5, "u", "c"), ev(1, "u", "a"), ev(5, "u", "d"), ev(2, "u", "b")], model)
    assert model.learned == ["a", "b", "c", "d"]


def test_model_cannot_see_an_event_before_its_publish() -> None:
    model = Scripted()
    events = [ev(1, "u", "a"), ev(2, "u", "b"), ev(3, "u", "c"), ev(4, "u", "d")]
    run(events, model, refresh_every=2)
    assert model.visible_at_query == [[], ["a", "b"], ["a", "b"]]


def test_step_carries_the_prefix_before_the_event() -> None:
    model = Scripted()
    run([ev(1, "u", "a"), ev(2, "u", "b")], model)
    assert [s.prefix for s in model.steps] == [(), ("a",)]


def test_items_reach_the_model_before_the_first_event() -> None:
    model = Scripted()
    evaluate([ev(1, "u", "a")], [model], EvalConfig(), items=[ItemMeta("a", "Alpha")])
    assert [i.item_id for i in model.items] == ["a"]


def test_second_half_counts_predictions_from_the_middle_event_on() -> None:
    model = Scripted(["b", "c"])  # hits at positions 1 and 2, miss at 3; the middle event is 2
    events = [ev(1, "u", "a"), ev(2, "u", "b"), ev(3, "u", "c"), ev(4, "u", "d")]
    result = run(events, model)
    assert result.summary(result.models[0])["hr@20_second_half"] == 0.5


def test_cold_coverage_reports_served_state_at_query_time() -> None:
    model = Scripted()
    events = [ev(1, "u", "a"), ev(2, "u", "b")]
    result = run(events, model, refresh_every=1)
    summary = result.summary(result.models[0])
    assert (summary["cold_predictions"], summary["cold_coverage"]) == (1, 0.0)


def test_every_model_sees_the_same_predictions() -> None:
    first, second = Scripted(["b"]), Scripted(["c"])
    result = evaluate([ev(1, "u", "a"), ev(2, "u", "b")], [first, second], EvalConfig())
    assert [list(m.ranks) for m in result.models] == [[1], [0]]


class Ordered(Scripted):
    """Writes its name into a shared log at every learn and publish call."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def learn(self, step: Step) -> None:
        self.log.append(f"{self.name} learn")
        super().learn(step)

    def publish(self) -> None:
        self.log.append(f"{self.name} publish")
        super().publish()


def test_each_model_runs_a_whole_block_and_the_models_take_turns_at_going_first() -> None:
    log: list[str] = []
    events = [ev(t, "u", f"i{t}") for t in range(6)]
    evaluate(events, [Ordered("A", log), Ordered("B", log)], EvalConfig(refresh_every=2))
    assert log[2:] == [  # after each model's initial publish
        *["A learn", "A learn", "A publish", "B learn", "B learn", "B publish"],
        *["B learn", "B learn", "B publish", "A learn", "A learn", "A publish"],
        *["A learn", "A learn", "A publish", "B learn", "B learn", "B publish"],
    ]


def test_blocks_end_at_every_publish_and_every_thousand_events() -> None:
    assert list(_blocks(5, 2)) == [(0, 2), (2, 4), (4, 5)]
    assert list(_blocks(2500, 10**9)) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert list(_blocks(2500, 1500)) == [(0, 1000), (1000, 1500), (1500, 2500)]
    assert list(_blocks(0, 1000)) == []


def test_learning_cpu_counts_work_on_other_threads() -> None:
    """gensim trains on threads of its own: its CPU time must count, not only the caller's thread."""

    def spin_on_a_thread() -> None:
        def spin() -> None:
            deadline = time.thread_time() + 0.05
            while time.thread_time() < deadline:
                pass

        worker = threading.Thread(target=spin)
        worker.start()
        worker.join()

    result = ModelResult("THREADED")
    _learning(result, spin_on_a_thread)
    assert result.learn_cpu_s >= 0.04
    assert result.learn_s >= 0.04


def test_the_stream_end_publishes_so_that_every_event_is_learned_and_timed() -> None:
    model = Scripted()
    run([ev(1, "u", "a"), ev(2, "u", "b"), ev(3, "u", "c")], model, refresh_every=2)
    assert model.published == ["a", "b", "c"]
