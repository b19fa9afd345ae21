"""The cold-start pieces around the tower: pair reservoir, temperature fit, cold scoring, blend."""

import itertools
import time

import numpy as np
import pytest

from recsim_stream.cold_start import (
    TEMPERATURE_GRID,
    ColdStart,
    PairReservoir,
    ServedRowsPlan,
    TemperatureFit,
)
from recsim_stream.config import Config, ConfigError, ContentConfig
from recsim_stream.content_features import learned_weight
from recsim_stream.events import ItemMeta
from recsim_stream.scoring import Embeddings
from recsim_stream.sgns_model import SgnsStreamModel


def test_reservoir_keeps_every_pair_until_full():
    reservoir = PairReservoir(4, seed=1)
    reservoir.add(["a", "b"], ["x", "y"])
    assert (reservoir.left, reservoir.right, reservoir.seen) == (["a", "b"], ["x", "y"], 2)


def test_reservoir_never_holds_more_than_its_capacity():
    reservoir = PairReservoir(3, seed=1)
    reservoir.add([str(i) for i in range(100)], [str(i) for i in range(100)])
    assert (len(reservoir), reservoir.seen) == (3, 100)


def test_reservoir_keeps_pairs_together():
    reservoir = PairReservoir(5, seed=2)
    reservoir.add([f"l{i}" for i in range(50)], [f"r{i}" for i in range(50)])
    assert [r[1:] for r in reservoir.right] == [left[1:] for left in reservoir.left]


def test_reservoir_samples_the_stream_uniformly():
    kept_late = 0
    for seed in range(200):
        reservoir = PairReservoir(10, seed=seed)
        for start in range(0, 100, 20):  # five batches of 20
            ids = [str(i) for i in range(start, start + 20)]
            reservoir.add(ids, ids)
        kept_late += sum(int(i) >= 50 for i in reservoir.left)
    assert kept_late / (200 * 10) == pytest.approx(0.5, abs=0.05)


def test_reservoir_is_the_same_for_the_same_seed():
    runs = []
    for _ in range(2):
        reservoir = PairReservoir(4, seed=9)
        reservoir.add([str(i) for i in range(30)], [str(i) for i in range(30)])
        runs.append(reservoir.left)
    assert runs[0] == runs[1]


def test_reservoir_restored_from_state_continues_identically():
    first = PairReservoir(4, seed=3)
    first.add([str(i) for i in range(10)], [str(i) for i in range(10)])
    second = PairReservoir(4, seed=3)
    second.restore(first.state())
    first.add(["p", "q", "r"], ["p", "q", "r"])
    second.add(["p", "q", "r"], ["p", "q", "r"])
    assert second.state() == first.state()


def test_reservoir_names_only_the_pairs_it_takes():
    reservoir = PairReservoir(3, seed=4)
    reservoir.add([str(i) for i in range(3)], [str(i) for i in range(3)])
    offsets, slots = reservoir.take(1000)
    assert (len(offsets) < 50, reservoir.seen, sorted(set(slots.tolist())) <= [0, 1, 2]) == (True, 1003, True)


def test_reservoir_take_and_put_equal_add():
    added, taken = PairReservoir(4, seed=5), PairReservoir(4, seed=5)
    ids = [str(i) for i in range(40)]
    added.add(ids, ids)
    offsets, slots = taken.take(40)
    taken.put(slots, [ids[i] for i in offsets], [ids[i] for i in offsets])
    assert taken.state() == added.state()


def test_reservoir_refuses_unequal_sides():
    with pytest.raises(ValueError, match="as many right items"):
        PairReservoir(4, seed=1).add(["a"], [])


def test_temperature_is_the_initial_one_before_any_evidence():
    assert TemperatureFit(0.1).value == 0.1


def test_a_target_far_above_the_others_fits_the_sharpest_temperature():
    fit = TemperatureFit(0.1)
    fit.observe(np.array([1.0]), np.array([[0.0, 0.0]]), np.array([0.0]))
    assert fit.value == TEMPERATURE_GRID[0]


def test_a_target_no_better_than_the_others_fits_the_flattest_temperature():
    fit = TemperatureFit(0.1)
    fit.observe(np.array([0.0]), np.array([[0.5, 0.5]]), np.array([0.0]))
    assert fit.value == TEMPERATURE_GRID[-1]


def _table(cold: list[bool], content: np.ndarray, temperature: float, new_item_share: float) -> Embeddings:
    n = len(cold)
    vectors = np.zeros((n, 2), dtype=np.float32)
    return Embeddings(
        [f"i{k}" for k in range(n)],
        vectors,
        vectors,
        np.array([0 if c else 5 for c in cold]),
        cold=np.array(cold),
        new_item_share=new_item_share,
        content=content,
        cold_temperature=temperature,
    )


_CONTENT = np.array([[1, 0], [1, 0], [0, 1], [0.8, 0.6]], dtype=np.float64)


def test_cold_items_are_scored_by_content_cosine_with_the_session():
    table = _table([False, True, True, True], _CONTENT, 0.1, 0.5)
    assert table.cold_scores([0]).round(3).tolist() == [1.0, 0.0, 0.8]


def test_a_sharp_cold_component_gives_its_mass_to_the_closest_cold_item_only():
    table = _table([False, True, True, True], _CONTENT, 0.01, 0.9)
    assert table.recommend(["i0"], 2) == ["i1", "i0"]


def test_a_flat_cold_component_spreads_its_mass_over_the_cold_items():
    table = _table([False, True, True, True], _CONTENT, 1.0, 0.9)
    assert table.recommend(["i0"], 2) == ["i1", "i3"]


def test_cold_scores_ignore_session_items_without_metadata():
    content = _CONTENT.copy()
    content[0] = 0.0
    table = _table([False, True, True, True], content, 0.1, 0.5)
    assert table.cold_scores([0]) is None


def test_embeddings_refuse_content_of_another_length():
    with pytest.raises(ValueError, match="one row per id"):
        _table([False, True], _CONTENT, 0.1, 0.5)


def _items() -> list[ItemMeta]:
    return [
        ItemMeta("a", "samsung phone", "electronics.smartphone", 300.0),
        ItemMeta("b", "samsung phone", "electronics.smartphone", 310.0),
        ItemMeta("c", "ikea sofa", "furniture.sofa", 500.0),
    ]


def test_complete_adds_a_cold_content_row_for_each_item_with_metadata_only():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    rows = cold_start.complete(
        ["a"], np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), np.array([100])
    )
    assert (rows.ids, rows.cold.tolist(), rows.counts.tolist()) == (
        ["a", "b", "c"],
        [False, True, True],
        [100, 0, 0],
    )


def test_a_full_completion_leaves_out_forgotten_items_and_items_learned_elsewhere():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items([*_items(), ItemMeta("d", "oak table", "furniture.table", 90.0)])
    learned = (np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), np.array([100]))
    assert cold_start.complete(["a"], *learned).ids == ["a", "b", "c", "d"]
    cold_start.forget("b")
    assert cold_start.complete(["a"], *learned).ids == ["a", "c", "d"]
    assert cold_start.complete(["a"], *learned, learned_elsewhere={"c"}).ids == ["a", "d"]
    # A learned item without metadata has no content row: it takes none of the listed items' rows.
    two = (np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), np.array([100, 7]))
    assert cold_start.complete(["unlisted", "a"], *two, learned_elsewhere={"gone"}).ids == [
        "unlisted",
        "a",
        "c",
        "d",
    ]


def test_complete_leaves_a_well_known_item_as_learned():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    rows = cold_start.complete(
        ["a"], np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), np.array([1000])
    )
    assert rows.inputs[0].tolist() == [1.0, 1.0]


def test_the_blend_is_numpys_float64_expression_to_the_bit():
    """A plan of learned rows with few and many interactions, one without metadata, and content-only
    rows: the compiled blend gives what ``w * learned + (1 - w) * norm * content`` gives in numpy, and
    moves only the rows with few interactions and metadata."""
    rng = np.random.default_rng(3)
    learned, dim = 7, 4
    plan = ServedRowsPlan(
        ids=[str(i) for i in range(9)],
        rows=np.array([4, 0, -1, 6, 2, 7, 1, 3, 5]),  # each id's content row; id 2 has no metadata
        content=rng.standard_normal((8, 2 * dim)).astype(np.float32),
        norm=np.float32(1.7),
        dim=dim,
        inputs=rng.standard_normal((learned, dim)).astype(np.float32),
        outputs=rng.standard_normal((learned, dim)).astype(np.float32),
        counts=np.array([1, 500, 3, 0, 40, 2, 9]),
        blend_below=190,
        blend_half_life=10.0,
    )
    served = plan.assemble()
    blended = np.array([0, 3, 4, 5, 6])
    w = learned_weight(plan.counts[blended].astype(np.float32), 10.0)[:, None]
    content = plan.content[plan.rows[blended]]
    expected_inputs = (w * plan.inputs[blended] + (1 - w) * plan.norm * content[:, :dim]).astype(np.float32)
    expected_outputs = (w * plan.outputs[blended] + (1 - w) * plan.norm * content[:, dim:]).astype(np.float32)
    assert np.array_equal(served.inputs[blended], expected_inputs)
    assert np.array_equal(served.outputs[blended], expected_outputs)
    kept = np.array([1, 2])  # many interactions; no metadata
    assert np.array_equal(served.inputs[kept], plan.inputs[kept])
    assert np.array_equal(served.outputs[kept], plan.outputs[kept])
    assert np.array_equal(served.inputs[learned:], plan.norm * plan.content[plan.rows[learned:], :dim])


def test_complete_gives_unit_content_rows():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    rows = cold_start.complete(
        [], np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    )
    assert np.linalg.norm(rows.content, axis=1).round(5).tolist() == [1.0, 1.0, 1.0]


def test_items_with_the_same_metadata_have_the_closest_content_before_any_training():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=4)
    cold_start.observe_items(_items())
    rows = cold_start.complete(
        [], np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    )
    cosines = rows.content @ rows.content[0]
    assert cosines[1] > cosines[2]


def test_train_takes_the_steps_its_event_budget_pays_for():
    cold_start = ColdStart(ContentConfig(hidden=16, train_batch=2, train_pairs_per_event=1.0), dim=2)
    cold_start.observe_items(_items())
    cold_start.remember_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), ["a", "b", "c"])
    vectors = np.ones((3, 2), np.float32)
    assert cold_start.train(5, {"a": 0, "b": 1, "c": 2}, vectors, vectors) == 2


def test_train_skips_pairs_without_learned_rows():
    cold_start = ColdStart(ContentConfig(hidden=16, train_batch=2, train_pairs_per_event=1.0), dim=2)
    cold_start.observe_items(_items())
    cold_start.remember_pairs(np.array([0, 0]), np.array([1, 2]), ["a", "b", "c"])
    vectors = np.ones((1, 2), np.float32)
    assert cold_start.train(4, {"a": 0}, vectors, vectors) == 0


def test_pairs_with_an_item_without_metadata_are_not_remembered():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    cold_start.remember_pairs(np.array([0, 0]), np.array([1, 2]), ["a", "b", "zz"])
    assert cold_start.reservoir.left == ["a"]


def _forgetting_a() -> ColdStart:
    """A cold start whose reservoir holds a pair with "a", then "a" deleted from the catalogue."""
    cold_start = ColdStart(ContentConfig(hidden=16, train_batch=4, train_pairs_per_event=1.0), dim=2)
    cold_start.observe_items(_items())
    cold_start.remember_pairs(np.array([0, 1, 2, 1, 2]), np.array([1, 2, 1, 2, 1]), ["a", "b", "c"])
    cold_start.forget("a")
    return cold_start


def _asking(asked: list[str]):
    def rows(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        asked.extend(ids)
        return np.ones((len(ids), 2), np.float32), np.ones((len(ids), 2), np.float32)

    return rows


def test_the_tower_trains_past_the_pairs_of_an_item_deleted_from_the_catalogue():
    """A tombstone on the items topic forgets an item whose pairs are in the reservoir: they leave the
    reservoir before the tower's next step (which raised KeyError in the updater's loop), and no row is
    pulled for the item."""
    cold_start, asked = _forgetting_a(), []
    assert cold_start.train_pulling(8, _asking(asked)) == 2
    assert sorted(set(asked)) == ["b", "c"]
    assert "a" not in cold_start.reservoir.left + cold_start.reservoir.right
    assert len(cold_start.reservoir) == 4
    vectors = np.ones((3, 2), np.float32)
    assert _forgetting_a().train(4, {"a": 0, "b": 1, "c": 2}, vectors, vectors) == 1


def test_a_restored_reservoir_drops_the_pairs_of_items_deleted_while_it_was_on_disk():
    cold_start = ColdStart(ContentConfig(hidden=16, train_batch=4, train_pairs_per_event=1.0), dim=2)
    cold_start.observe_items(_items())
    cold_start.remember_pairs(np.array([0, 1, 2, 1, 2]), np.array([1, 2, 1, 2, 1]), ["a", "b", "c"])
    restarted = ColdStart(cold_start.config, dim=2)
    restarted.restore(cold_start.state())
    restarted.observe_items(_items()[1:])  # the items topic re-read: "a" was deleted meanwhile
    asked: list[str] = []
    assert restarted.train_pulling(4, _asking(asked)) == 1
    assert sorted(set(asked)) == ["b", "c"] and len(restarted.reservoir) == 4


def test_a_deleted_item_stays_deleted_until_listed_again_and_through_a_checkpoint(tmp_path):
    from recsim_stream.checkpoint import CheckpointStore
    from recsim_stream.config import CheckpointConfig

    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    cold_start.forget("a")
    cold_start.forget("never-listed")
    assert cold_start.deleted == {"a", "never-listed"}
    assert (cold_start.take_removed(), cold_start.take_removed()) == ({"a", "never-listed"}, set())
    cold_start.observe_items([ItemMeta("never-listed", "oak table")])
    cold_start.forget("b")
    cold_start.observe_items([_items()[1]])  # listed again before a snapshot took the removal
    assert (cold_start.deleted, cold_start.take_removed()) == ({"a"}, set())
    store = CheckpointStore(CheckpointConfig(dir=str(tmp_path)))
    store.write({}, {"cold_start": cold_start.state()})
    state = store.newest().state["cold_start"]

    restarted = ColdStart(cold_start.config, dim=2)
    restarted.restore(state)  # a tombstone compaction has since dropped is still known
    assert (restarted.deleted, restarted.take_removed()) == ({"a"}, {"a"})
    restarted.observe_items([_items()[0]])
    assert restarted.deleted == set()
    listed_first = ColdStart(cold_start.config, dim=2)
    listed_first.observe_items(_items())  # the items topic, read before the checkpoint, lists "a" again
    listed_first.forget("c")
    listed_first.restore(state)
    assert listed_first.deleted == {"c"}


def test_a_delta_of_unlisted_items_before_any_encoding_has_no_content():
    """The updater's first snapshot after a restart can come before its spare time encoded the
    listing (``encode_limit=0``): no content row exists yet, and the delta's items have none."""
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items([ItemMeta("x", "oak table")])
    learned = np.ones((1, 2), np.float32)
    rows = cold_start.plan(
        ["clicked"], learned, learned, np.array([3]), changed_only=True, encode_limit=0
    ).assemble()
    assert (rows.ids, rows.content.tolist(), rows.inputs.tolist()) == (["clicked"], [[0.0] * 4], [[1.0, 1.0]])


def test_calibration_on_a_target_matching_its_session_sharpens_the_temperature():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    served = _table([False, True, True, True], _CONTENT, 0.1, 0.5)
    cold_start.metadata.update({f"i{k}": ItemMeta(f"i{k}") for k in range(4)})
    cold_start.record_new_item(["i0"], "i1")
    cold_start.calibrate(served)
    assert cold_start.temperature.value == TEMPERATURE_GRID[0]


def test_content_config_refuses_a_train_batch_of_one():
    with pytest.raises(ConfigError, match="content.train_batch"):
        ContentConfig(train_batch=1)


def test_a_cold_start_restored_from_its_checkpoint_state_continues_like_the_original(tmp_path):
    from recsim_stream.checkpoint import CheckpointStore
    from recsim_stream.config import CheckpointConfig

    config = ContentConfig(hidden=16, train_batch=2, train_pairs_per_event=1.0)
    rng = np.random.default_rng(4)
    position = {"a": 0, "b": 1, "c": 2}
    vectors = rng.normal(size=(3, 2)).astype(np.float32)
    original = ColdStart(config, dim=2)
    original.observe_items(_items())
    original.remember_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), ["a", "b", "c"])
    original.train(5, position, vectors, vectors)
    original.record_new_item(["a"], "c")
    store = CheckpointStore(CheckpointConfig(dir=str(tmp_path)))
    store.write({}, {"cold_start": original.state()})

    restored = ColdStart(config, dim=2)
    restored.observe_items(_items())  # the metadata comes from the items topic, not the checkpoint
    restored.restore(store.newest().state["cold_start"])
    for cold_start in (original, restored):
        cold_start.remember_pairs(np.array([1]), np.array([0]), ["a", "b", "c"])
        cold_start.train(7, position, vectors, vectors)
    empty = np.zeros((0, 2), np.float32)
    rows = [c.complete([], empty, empty, np.zeros(0, np.int64)) for c in (original, restored)]
    np.testing.assert_array_equal(rows[0].content, rows[1].content)
    assert restored.tower.steps == original.tower.steps
    assert restored.reservoir.state() == original.reservoir.state()


def _complete_changed(cold_start: ColdStart, learned=()) -> list[str]:
    empty = np.zeros((0, 2), np.float32)
    return cold_start.complete([], empty, empty, np.zeros(0, np.int64), learned, changed_only=True).ids


def test_the_cold_items_are_counted_through_listings_deletions_expiry_and_a_restore():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    cold_start.published_learned(["a", "x"], full=True)  # x: learned, never listed
    assert cold_start.cold_listed == 0  # nothing encoded yet: no content row
    _complete_changed(cold_start)
    assert cold_start.cold_listed == 2  # b, c
    cold_start.published_learned(["b", "x"], full=False)
    cold_start.observe_items([ItemMeta("x", "oak table", "furniture.table", 90.0)])
    _complete_changed(cold_start)
    assert cold_start.cold_listed == 1  # c
    cold_start.forget("a")
    cold_start.lost_learned(["a", "b"])  # a deleted, b expired
    assert cold_start.cold_listed == 2  # b, c
    cold_start.restore(cold_start.state())  # in place: rows are re-encoded from the items re-read
    assert cold_start.cold_listed == 0
    cold_start.observe_items([m for m in _items() if m.item_id != "a"])
    cold_start.observe_items([ItemMeta("x", "oak table", "furniture.table", 90.0)])
    _complete_changed(cold_start)
    assert cold_start.cold_listed == 2  # b, c; x is learned


def test_a_delta_gets_content_rows_only_for_items_whose_metadata_arrived_since():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    _complete_changed(cold_start)
    cold_start.observe_items([ItemMeta("d", "oak table", "furniture.table", 90.0)])
    assert _complete_changed(cold_start) == ["d"]


def test_a_delta_gives_no_content_row_to_a_changed_item_learned_elsewhere():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    assert sorted(_complete_changed(cold_start, learned={"a"})) == ["b", "c"]


def test_items_whose_learned_rows_expired_get_content_rows_again_and_leave_the_reservoir():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    cold_start.reservoir.add(["a", "b", "a"], ["b", "c", "c"])
    _complete_changed(cold_start, learned={"a", "b"})
    cold_start.unlearn(["a", "gone"])  # "gone" was never listed: nothing to serve it by
    assert sorted(_complete_changed(cold_start, learned={"b"})) == ["a"]
    assert cold_start.reservoir.state()["left"] == ["b"]


def test_re_encoding_after_the_tower_moved_takes_at_most_a_chunk_per_refresh():
    config = ContentConfig(
        hidden=16,
        train_batch=2,
        train_pairs_per_event=1.0,
        reencode_every_steps=1,
        reencode_chunk=2,
        reencode_tolerance=0.0,
    )
    cold_start = ColdStart(config, dim=2)
    cold_start.observe_items(_items())
    _complete_changed(cold_start)
    cold_start.remember_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), ["a", "b", "c"])
    vectors = np.ones((3, 2), np.float32)
    cold_start.train(2, {"a": 0, "b": 1, "c": 2}, vectors, vectors)
    assert [len(_complete_changed(cold_start)) for _ in range(3)] == [2, 1, 0]


def test_calibration_on_content_sharpens_the_temperature_on_a_target_like_its_session():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    _complete_changed(cold_start)  # published: every item has its content row
    cold_start.published_learned(["a"], full=True)
    cold_start.record_new_item(["a"], "b")
    cold_start.calibrate_on_content()
    assert cold_start.temperature.value == TEMPERATURE_GRID[0]


def test_calibration_on_content_takes_no_evidence_from_a_target_never_served():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())  # listed, not yet encoded or published
    cold_start.published_learned(["a"], full=True)
    cold_start.record_new_item(["a"], "b")
    cold_start.calibrate_on_content()
    assert cold_start.temperature.evidence == 0.0


def test_a_re_encoded_vector_that_barely_moved_is_not_republished():
    config = ContentConfig(
        hidden=16, train_batch=2, train_pairs_per_event=1.0, reencode_every_steps=1, reencode_tolerance=2.0
    )
    cold_start = ColdStart(config, dim=2)
    cold_start.observe_items(_items())
    _complete_changed(cold_start)
    cold_start.remember_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), ["a", "b", "c"])
    vectors = np.ones((3, 2), np.float32)
    cold_start.train(2, {"a": 0, "b": 1, "c": 2}, vectors, vectors)
    assert _complete_changed(cold_start) == []


def test_calibration_on_content_survives_draws_that_miss_every_rare_cold_row():
    config = ContentConfig(hidden=16, calibration_candidates=1)
    cold_start = ColdStart(config, dim=2)
    catalogue = [ItemMeta(f"i{n}", f"item {n}", "cat.sub", 10.0 + n) for n in range(400)]
    cold_start.observe_items(catalogue)
    _complete_changed(cold_start)
    cold_start.published_learned([item.item_id for item in catalogue[:-2]], full=True)  # 2 cold rows of 400
    for _ in range(20):  # 64 draws of 400 rows miss both cold ones about 3 times in 4
        cold_start.record_new_item(["i0"], "i398")
        cold_start.calibrate_on_content()
    assert cold_start.temperature.value in TEMPERATURE_GRID


def test_training_the_tower_is_counted_in_cpu_seconds():
    cold_start = ColdStart(ContentConfig(hidden=16, train_batch=2, train_pairs_per_event=1.0), dim=2)
    cold_start.observe_items(_items())
    cold_start.remember_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), ["a", "b", "c"])
    vectors = np.ones((3, 2), np.float32)
    cold_start.train(5, {"a": 0, "b": 1, "c": 2}, vectors, vectors)
    assert cold_start.training_cpu_s > 0


def test_the_tower_is_timed_by_the_clock_it_is_given():
    """Eval hands its tower the process's clock (torch's threads count); a clock that ticks once a
    read shows each timed section read it twice: keeping the pairs, then the training call."""
    ticks = itertools.count()
    cold_start = ColdStart(
        ContentConfig(hidden=16, train_batch=2, train_pairs_per_event=1.0),
        dim=2,
        cpu_clock=lambda: float(next(ticks)),
    )
    cold_start.observe_items(_items())
    cold_start.remember_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), ["a", "b", "c"])
    vectors = np.ones((3, 2), np.float32)
    cold_start.train(5, {"a": 0, "b": 1, "c": 2}, vectors, vectors)
    assert cold_start.training_cpu_s == 2.0


def test_eval_times_its_tower_over_every_thread():
    model = SgnsStreamModel(Config())
    assert model.cold_start is not None and model.cold_start._cpu_clock is time.process_time


def test_a_bulk_listing_is_encoded_a_chunk_per_call_oldest_first():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    empty, no_counts = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    first = cold_start.complete([], empty, empty, no_counts, encode_limit=2)
    second = cold_start.complete([], empty, empty, no_counts, changed_only=True, encode_limit=2)
    assert (first.ids, second.ids) == (["a", "b"], ["c"])


def test_an_item_not_encoded_yet_gets_no_row_rather_than_a_zero_vector():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    empty, no_counts = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    rows = cold_start.complete([], empty, empty, no_counts, encode_limit=1)
    assert (rows.ids, bool(np.all(np.linalg.norm(rows.content, axis=1) > 0))) == (["a"], True)


class SteppingClock:
    """A clock that moves ``step`` seconds at every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _catalogue(n: int) -> list[ItemMeta]:
    return [ItemMeta(f"i{k}", f"item {k % 97}", f"cat.sub{k % 7}", 10.0 + k) for k in range(n)]


def _published(cold_start: ColdStart) -> list[str]:
    empty, no_counts = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    return cold_start.complete([], empty, empty, no_counts, changed_only=True, encode_limit=0).ids


def test_encode_listed_encodes_one_batch_oldest_first_when_the_budget_is_spent_at_once():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_catalogue(300))
    encoded = cold_start.encode_listed(0.5, clock=SteppingClock(1.0))  # past the deadline after a batch
    assert (encoded, set(_published(cold_start))) == (256, {f"i{k}" for k in range(256)})


def test_encode_listed_with_time_to_spare_encodes_every_listed_item():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_catalogue(300))
    assert (cold_start.encode_listed(10.0, clock=SteppingClock(0.001)), cold_start.listed_unencoded) == (
        300,
        0,
    )


def test_a_listed_item_waits_for_encode_listed_under_a_zero_encode_limit():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    assert (_published(cold_start), cold_start.listed_unencoded) == ([], 3)


def test_complete_encodes_a_clicked_item_at_once_under_a_zero_encode_limit():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    cold_start.observe_items(_items())
    learned = np.ones((1, 2), np.float32)
    rows = cold_start.complete(["b"], learned, learned, np.array([1]), encode_limit=0)
    assert (rows.ids, float(np.linalg.norm(rows.content[0])) > 0, cold_start.listed_unencoded) == (
        ["b"],
        True,
        2,
    )


def test_content_rows_encoded_in_many_batches_equal_one_encoding_of_the_whole_catalogue():
    cold_start = ColdStart(ContentConfig(hidden=16), dim=2)
    catalogue = _catalogue(3000)  # past the first buffer's 1,024 rows, so the table grows twice
    cold_start.observe_items(catalogue)
    while cold_start.listed_unencoded:
        cold_start.encode_listed(0.0)
    empty, no_counts = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    rows = cold_start.complete([], empty, empty, no_counts, encode_limit=0)
    expected = cold_start.tower.encode_unit([catalogue[int(i[1:])] for i in rows.ids])
    assert (len(rows.ids), bool(np.allclose(rows.content, expected, atol=1e-6))) == (3000, True)
