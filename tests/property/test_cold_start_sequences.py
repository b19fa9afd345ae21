"""The cold start under any order of what the updater does to it: listings, deletions (tombstones),
expired rows, trained pairs, new-item events, tower steps, full and delta publishes, calibration, spare-time
encoding and checkpoint restores. Each publish must give a well-formed served table; nothing may
raise. (A deletion followed by a tower step raised KeyError in the updater's loop.)"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from recsim_stream.cold_start import ColdStart
from recsim_stream.config import ContentConfig
from recsim_stream.events import ItemMeta

DIM = 2
POOL = [f"i{k}" for k in range(4)]  # few, so that listings, pairs and deletions meet
NAMES = dict(enumerate(POOL))  # learner key -> item id
CONFIG = ContentConfig(
    hidden=16, train_batch=2, train_pairs_per_event=1.0, reservoir_pairs=6, calibration_candidates=4
)
TITLES = ["samsung phone", "ikea sofa", "oak table", ""]

items_ = st.sampled_from(POOL)
keys_ = st.integers(0, len(POOL) - 1)


def _vectors(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Learned rows as a learner would return them: one per id, a function of the id."""
    seeds = np.array([POOL.index(i) + 1 for i in ids], dtype=np.float32)[:, None]
    return np.hstack([seeds, -seeds]).astype(np.float32), np.hstack([-seeds, seeds]).astype(np.float32)


class ColdStartSequences(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cold_start = ColdStart(CONFIG, DIM)
        self.listed: dict[str, ItemMeta] = {}  # the catalogue as the items topic has it now
        self.counts: dict[str, int] = {}  # items with a learned row, and their interactions
        self.unlearned: set[str] = set()  # items whose rows expired and that no pair has trained since

    @initialize(listed=st.lists(items_, unique=True))
    def list_catalogue(self, listed: list[str]) -> None:
        """What the items topic holds at start, read before the first event."""
        for k, item in enumerate(listed):
            self.list_item(item, TITLES[k % len(TITLES)], float(k))

    @rule(item=items_, title=st.sampled_from(TITLES), price=st.none() | st.floats(0, 1e4))
    def list_item(self, item: str, title: str, price: float | None) -> None:
        meta = ItemMeta(item, title, "electronics.smartphone" if "phone" in title else "", price)
        self.listed[item] = meta
        self.cold_start.observe_items([meta])

    @rule(item=items_)
    def delete_item(self, item: str) -> None:
        self.listed.pop(item, None)
        self.cold_start.forget(item)
        self.cold_start.lost_learned([item])  # the updater's next snapshot stops serving its row

    @rule(pairs=st.lists(st.tuples(keys_, keys_).filter(lambda p: p[0] != p[1]), min_size=1, max_size=6))
    def train_pairs(self, pairs: list[tuple[int, int]]) -> None:
        # Both directions, as the learner's batches have them.
        left = np.array([a for a, _ in pairs] + [b for _, b in pairs], dtype=np.int64)
        right = np.array([b for _, b in pairs] + [a for a, _ in pairs], dtype=np.int64)
        for key in {*left.tolist(), *right.tolist()}:
            self.counts[NAMES[key]] = self.counts.get(NAMES[key], 0) + 1
            self.unlearned.discard(NAMES[key])
        self.cold_start.remember_pairs(left, right, NAMES)

    @rule(items=st.lists(items_, unique=True, min_size=1))
    def expire_rows(self, items: list[str]) -> None:
        """The shards dropped these items' rows (learn.expire_after_s), as Updater.expire reports."""
        for item in items:
            self.counts.pop(item, None)
        self.unlearned.update(items)
        self.cold_start.lost_learned(items)
        self.cold_start.unlearn(items)

    @rule(prefix=st.lists(items_, min_size=0, max_size=4), item=items_)
    def new_item_event(self, prefix: list[str], item: str) -> None:
        self.cold_start.record_new_item(prefix, item)

    @rule(events=st.integers(0, 6))
    def tower_steps(self, events: int) -> None:
        self.cold_start.train_pulling(events, _vectors)
        reservoir = self.cold_start.reservoir
        assert set(reservoir.left + reservoir.right) <= set(self.listed)  # a deleted item's pairs left
        assert not set(reservoir.left + reservoir.right) & self.unlearned  # so did an expired one's

    @rule()
    def calibrate(self) -> None:
        self.cold_start.calibrate_on_content()

    @rule()
    def encode_in_spare_time(self) -> None:
        self.cold_start.encode_listed(0.0)

    @rule()
    def publish_full(self) -> None:
        ids = sorted(self.counts)
        inputs, outputs = _vectors(ids)
        counts = np.array([self.counts[i] for i in ids], dtype=np.int64)
        self.cold_start.published_learned(ids, full=True)
        rows = self.cold_start.complete(ids, inputs, outputs, counts)
        self._check(rows)
        # Every learned item, and every listed one as a content-only row.
        assert set(rows.ids) == set(ids) | set(self.listed)

    @precondition(lambda self: self.counts)
    @rule(data=st.data(), encode_limit=st.none() | st.integers(0, 3))
    def publish_delta(self, data: st.DataObject, encode_limit: int | None) -> None:
        learned = sorted(self.counts)
        changed = data.draw(st.lists(st.sampled_from(learned), unique=True))
        inputs, outputs = _vectors(changed)
        counts = np.array([self.counts[i] for i in changed], dtype=np.int64)
        self.cold_start.published_learned(changed, full=False)
        rows = self.cold_start.plan(
            changed,
            inputs,
            outputs,
            counts,
            learned_elsewhere=set(learned) - set(changed),
            changed_only=True,
            encode_limit=encode_limit,
        ).assemble()
        self._check(rows)
        assert set(rows.ids) <= set(changed) | set(self.listed)
        assert not set(rows.ids) & (set(learned) - set(changed))

    @rule()
    def restart_from_checkpoint(self) -> None:
        """As the updater restarts: a new cold start, its state restored, the items topic re-read."""
        state = self.cold_start.state()
        restarted = ColdStart(CONFIG, DIM)
        restarted.restore(state)
        restarted.observe_items(list(self.listed.values()))
        self.cold_start = restarted

    def _check(self, rows) -> None:
        n = len(rows.ids)
        assert len(set(rows.ids)) == n
        assert rows.inputs.shape == rows.outputs.shape == (n, DIM)
        assert rows.content.shape == (n, 2 * DIM) and rows.cold.shape == rows.counts.shape == (n,)
        assert np.isfinite(rows.inputs).all() and np.isfinite(rows.outputs).all()
        norms = np.linalg.norm(rows.content, axis=1)
        listed = np.array([i in self.listed for i in rows.ids], dtype=bool)
        # A listed item's content row is a unit vector once encoded; an unlisted one has none.
        assert np.allclose(norms[~listed], 0.0)
        assert np.all((np.abs(norms[listed] - 1.0) < 1e-4) | (norms[listed] == 0.0))
        assert (rows.cold == (rows.counts == 0)).all()

    @invariant()
    def reservoir_within_capacity(self) -> None:
        assert len(self.cold_start.reservoir) <= CONFIG.reservoir_pairs

    @invariant()
    def cold_rows_counted_as_both_sets_change(self) -> None:
        """The learned items with a content row, kept by counting, as intersecting the two would."""
        cold_start = self.cold_start
        assert cold_start._learned_listed == len(cold_start._row.keys() & cold_start.learned)


ColdStartSequences.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
test_cold_start_sequences = ColdStartSequences.TestCase
