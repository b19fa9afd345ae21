"""Baselines: what each recommends from its published state, on literal tiny streams."""

from __future__ import annotations

import math

from recsim_stream.baselines import (
    GensimRetrain,
    GensimRetrainConfig,
    ItemKnn,
    ItemKnnConfig,
    Pop,
    Recent,
    RecentKnn,
    make_baselines,
    recent_items,
)
from recsim_stream.evaluate import Step
from recsim_stream.events import EventKind


def step(session: str, prefix: tuple[str, ...], item: str, repeat: bool = False) -> Step:
    return Step(0, session, "u", prefix, item, EventKind.CLICK, 0.0, repeat)


def session_steps(session: str, items: list[str]) -> list[Step]:
    return [step(session, tuple(items[:i]), item) for i, item in enumerate(items)]


def feed(model, steps: list[Step]) -> None:
    for s in steps:
        model.learn(s)
    model.publish()


def test_recent_items_most_recent_first_without_the_last() -> None:
    assert recent_items(("a", "b", "a", "c", "d"), 20) == ["c", "a", "b"]


def test_recent_items_stops_at_k() -> None:
    assert recent_items(("a", "b", "c", "d"), 2) == ["c", "b"]


def test_recent_recommends_session_history() -> None:
    assert Recent().recommend(("a", "b", "c"), 20) == ["b", "a"]


def test_pop_ranks_by_count_ties_in_first_seen_order() -> None:
    pop = Pop()
    feed(pop, session_steps("s1", ["a", "b", "c", "b"]))
    assert pop.recommend(("x",), 3) == ["b", "a", "c"]


def test_pop_ignores_repeats() -> None:
    pop = Pop()
    feed(pop, [step("s1", (), "a"), step("s1", ("a",), "a", repeat=True), step("s1", ("a",), "b")])
    assert pop.recommend(("x",), 2) == ["a", "b"]


def test_pop_answers_from_published_state_only() -> None:
    pop = Pop()
    pop.learn(step("s1", (), "a"))
    assert (pop.recommend(("x",), 5), pop.serves("a")) == ([], False)


def test_itemknn_scores_are_cosine_normalised_cooccurrence() -> None:
    knn = ItemKnn()
    # a-b co-occur twice (n(a)=2, n(b)=2: 2/2 = 1.0); a-c once (n(c)=4: 1/sqrt(8) = 0.35)
    feed(knn, session_steps("s1", ["a", "b"]) + session_steps("s2", ["a", "b"]))
    feed(knn, session_steps("s3", ["c", "a"]) + [step("s4", (), "c")] * 3)
    assert knn.recommend(("a",), 20) == ["b", "c"]


def test_itemknn_pairs_only_within_the_window() -> None:
    knn = ItemKnn(ItemKnnConfig(window=2))
    feed(knn, session_steps("s1", ["a", "b", "c", "d"]))
    assert sorted(knn.recommend(("d",), 20)) == ["b", "c"]


def test_itemknn_repeats_add_no_pairs() -> None:
    knn = ItemKnn()
    feed(knn, [step("s1", (), "a"), step("s1", ("b",), "a", repeat=True)])
    assert knn.recommend(("a",), 20) == []


def test_itemknn_answers_from_published_state_only() -> None:
    knn = ItemKnn()
    feed(knn, session_steps("s1", ["a", "b"]))
    for s in session_steps("s2", ["a", "c"]):
        knn.learn(s)
    assert knn.recommend(("a",), 20) == ["b"]


def test_itemknn_cache_is_refreshed_on_publish() -> None:
    knn = ItemKnn()
    feed(knn, session_steps("s1", ["a", "b"]))
    knn.recommend(("a",), 20)
    feed(knn, session_steps("s2", ["a", "c"]))
    assert knn.recommend(("a",), 20) == ["b", "c"]


def test_recent_knn_puts_session_items_first_then_neighbours() -> None:
    model = RecentKnn()
    feed(model, session_steps("s1", ["c", "x"]) + session_steps("s2", ["c", "a"]))
    assert model.recommend(("a", "b", "c"), 20) == ["b", "a", "x"]


def test_gensim_retrain_serves_nothing_before_the_first_retrain() -> None:
    model = GensimRetrain(GensimRetrainConfig(retrain_every=10))
    for s in session_steps("s1", ["a", "b", "c"]):
        model.learn(s)
    assert (model.recommend(("a",), 5), model.serves("a")) == ([], False)


def test_gensim_retrain_publishes_every_retrain_every_events() -> None:
    model = GensimRetrain(GensimRetrainConfig(retrain_every=4, seed=1))
    for s in session_steps("s1", ["a", "b", "c", "d"]):
        model.learn(s)
    assert (model.serves("d"), sorted(model.recommend(("a", "b"), 5))) == (True, ["a", "c", "d"])


def test_make_baselines_retrains_gensim_every_tenth_of_the_stream() -> None:
    gensim = make_baselines(17_434)[-1]
    assert (gensim.name, gensim._config.retrain_every) == ("GENSIM-RETRAIN", math.ceil(17_434 / 10))
