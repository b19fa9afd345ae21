"""Cold start beside the learner: the content tower, trained on items that already have learned
vectors, gives every item with metadata a vector before its first click, and is blended out as the
item's own interactions accumulate.

The tower predicts an item's *pair* of learned vectors, input and output side by side (2 x dim),
because a next-item candidate is scored by its output vector and a query is built from input
vectors: a cold item must be able to play both parts.

Blend (``ServedRowsPlan.assemble``, ``content_features.blend_rows``): ``w = n / (n + half_life)`` on
the learned vector, ``1 - w`` on the content vector scaled to the learned vectors' norm, with ``n`` the
item's interaction count (positive pairs it took part in); an item with no interaction is served from
content alone and flagged cold.

What makes the cold component hit rather than merely cover:
- the tower's output is a fixed per-field feature sketch (``content_features.FeatureSketch``) plus a
  learned residual that starts at zero, so items sharing metadata are near each other before the tower
  has trained (most new items of a stream arrive early, when it has not);
- the tower trains on a uniform reservoir of co-occurring pairs from the whole stream
  (``PairReservoir``), within a budget of pairs per learner event;
- cold items are ranked by the cosine of *content* vectors (``scoring.Embeddings.cold_scores``);
- that softmax's temperature is fitted by likelihood on the new items sessions actually went on to
  (``TemperatureFit``), scored against the table that served them.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import ContentConfig
from recsim_stream.content import ContentTower
from recsim_stream.content_features import blend_rows, learned_weight
from recsim_stream.events import ItemMeta
from recsim_stream.scoring import SESSION_ITEMS, Embeddings, content_queries

# Items whose learned weight is above this are served as learned (the content part is negligible).
_BLEND_UNTIL = 0.95
# Temperatures the cold softmax may take; cosines live in [-1, 1], so 0.01 is nearly an argmax and 1
# nearly uniform.
TEMPERATURE_GRID = np.geomspace(0.001, 1.0, 16)
_CALIBRATION_DECAY = 0.95  # per calibration: old evidence fades, so a drifting stream is followed


def blend_below(half_life: float) -> int:
    """The interaction count from which the blend leaves a learned vector as it is (its learned weight
    is then above ``_BLEND_UNTIL``)."""
    return int(np.ceil(half_life * _BLEND_UNTIL / (1 - _BLEND_UNTIL)))


class PairReservoir:
    """A uniform sample of up to ``capacity`` co-occurring pairs over the whole stream (algorithm R).

    The tower then trains on many sessions' pairs rather than on the last batch only. Random draws
    come from (seed, pairs seen), so a run is reproducible and the state is just the pairs.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.left: list[str] = []
        self.right: list[str] = []
        self.seen = 0

    def __len__(self) -> int:
        return len(self.left)

    def add(self, left: Sequence[str], right: Sequence[str]) -> None:
        if len(right) != len(left):
            raise ValueError(
                f"reservoir.add needs as many right items as left items, got {len(left)} and {len(right)}"
            )
        offsets, slots = self.take(len(left))
        self.put(slots, [left[i] for i in offsets.tolist()], [right[i] for i in offsets.tolist()])

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm R's decisions for the next ``n`` pairs of the stream, made before any pair is
        looked at: which of them (offsets into the ``n``, ascending) the sample takes, and the slot each
        goes to (a slot at or past ``len(self)`` means "append"). Once the sample is full most pairs are
        passed over, so a caller names only the pairs taken (``put``), not the whole batch."""
        head = min(n, self.capacity - len(self.left))
        offsets, slots = np.arange(head), np.arange(len(self.left), len(self.left) + head)
        if head < n:
            rng = np.random.default_rng([self.seed, self.seen])
            index = self.seen + np.arange(head, n)  # position of each pair in the whole stream
            accepted = np.flatnonzero(rng.random(n - head) * (index + 1) < self.capacity)
            offsets = np.concatenate([offsets, head + accepted])
            slots = np.concatenate([slots, rng.integers(0, self.capacity, len(accepted))])
        self.seen += n
        return offsets, slots

    def put(self, slots: np.ndarray, left: Sequence[str], right: Sequence[str]) -> None:
        """Store the pairs ``take`` chose (or those of them the caller keeps), in ``take``'s order. A
        slot past the end appends: when the caller dropped some of the filling pairs, the sample is
        still filling (and never exceeds its capacity: every slot is below it)."""
        for slot, a, b in zip(slots.tolist(), left, right, strict=True):
            if slot < len(self.left):
                self.left[slot], self.right[slot] = a, b
            else:
                self.left.append(a)
                self.right.append(b)

    def keep(self, wanted: Callable[[str, str], bool]) -> None:
        """Drop the pairs ``wanted`` refuses. The sample fills again from the next pairs of the stream."""
        kept = [(a, b) for a, b in zip(self.left, self.right, strict=True) if wanted(a, b)]
        self.left, self.right = [a for a, _ in kept], [b for _, b in kept]

    def state(self) -> dict[str, object]:
        """Plain lists and ints (msgpack/JSON-able)."""
        return {"left": list(self.left), "right": list(self.right), "seen": self.seen}

    def restore(self, state: dict[str, object]) -> None:
        left, right, seen = state["left"], state["right"], state["seen"]
        assert isinstance(left, list) and isinstance(right, list) and isinstance(seen, int)
        if len(left) != len(right) or len(left) > self.capacity:
            raise ValueError(
                f"reservoir state: expected equal left/right lists of at most {self.capacity} pairs, "
                f"got {len(left)} and {len(right)}"
            )
        self.left, self.right, self.seen = list(left), list(right), seen


class TemperatureFit:
    """Maximum-likelihood temperature of the cold component's softmax, over ``TEMPERATURE_GRID``.

    The cold component is ``softmax(cosine / t)`` over the cold items; each observed new-item target
    adds its log-probability under every ``t`` of the grid (evidence decays per call), and ``value``
    is the best one so far, ``initial`` before any evidence.
    """

    def __init__(self, initial: float) -> None:
        self.initial = initial
        self.loglik = np.zeros(len(TEMPERATURE_GRID))
        self.evidence = 0.0

    def observe(self, target: np.ndarray, candidates: np.ndarray, log_scale: np.ndarray) -> None:
        """``target`` (m,): each event's cosine with the item it went on to; ``candidates`` (m, s):
        cosines with a sample of the other cold items (-inf where none); ``log_scale`` (m,): log of how
        many other cold items each sampled one stands for."""
        if not len(target):
            return
        # log Z = logaddexp(t/tau, log_scale + log sum_s exp(c/tau)), the sum taken about each row's
        # best candidate so that one float32 exp per (temperature, event, candidate) is all it costs.
        inverse = (1.0 / TEMPERATURE_GRID)[:, None]  # (G, 1)
        best = candidates.max(axis=1)  # (m,), -inf for an event with no other candidate
        some = np.isfinite(best)
        spread = np.where(some[:, None], candidates - np.where(some, best, 0.0)[:, None], -np.inf)
        scaled = spread.astype(np.float32)[None, :, :] * inverse.astype(np.float32)[:, :, None]  # (G, m, s)
        with np.errstate(divide="ignore"):  # log 0 = -inf: an event with no other candidate
            others = np.log(np.exp(scaled, out=scaled).sum(axis=2, dtype=np.float64))
        t = target[None, :] * inverse  # (G, m)
        log_z = np.logaddexp(t, np.where(some, best, 0.0)[None, :] * inverse + log_scale[None, :] + others)
        self.loglik = _CALIBRATION_DECAY * self.loglik + (t - log_z).sum(axis=1)
        self.evidence = _CALIBRATION_DECAY * self.evidence + len(target)

    @property
    def value(self) -> float:
        return self.initial if self.evidence == 0 else float(TEMPERATURE_GRID[int(np.argmax(self.loglik))])


@dataclass(frozen=True)
class ServedRows:
    """What ``ColdStart.complete`` hands to ``scoring.Embeddings``: every row, cold flags, content."""

    ids: list[str]
    inputs: np.ndarray
    outputs: np.ndarray
    counts: np.ndarray
    cold: np.ndarray  # bool: no interaction yet
    content: np.ndarray  # unit content vectors, a zero row where an item has no metadata


@dataclass(frozen=True)
class ServedRowsPlan:
    """The served rows, before their tables are copied out (for a full snapshot at 1M items, ~1.3 GB
    of fresh memory: 4-4.5 s of the updater's loop in bench e2e runs, near a full machine's page
    cache). ``assemble`` may run on another thread while the cold start goes on: ``content`` is the
    buffer as of the plan, whose rows are never moved (growing or compacting makes new buffers), only
    rewritten in place when re-encoded, and a row re-encoded after the plan is a changed row, which
    the next delta publishes over whatever this copy holds."""

    ids: list[str]  # the learned rows' ids, then the content-only rows'
    rows: np.ndarray  # each id's content row (-1: no metadata)
    content: np.ndarray
    norm: np.float32
    dim: int
    inputs: np.ndarray  # the learned rows
    outputs: np.ndarray
    counts: np.ndarray
    blend_below: int
    blend_half_life: float

    @property
    def count(self) -> int:
        return len(self.ids)

    def assemble(self) -> ServedRows:
        rows, inputs, outputs, counts, norm = self.rows, self.inputs, self.outputs, self.counts, self.norm
        if len(self.content):
            content = self.content[rows]
            content[rows < 0] = 0.0
        else:  # nothing encoded yet (a restart's first delta, its listing not encoded): every row is -1
            content = np.zeros((len(rows), self.content.shape[1]), np.float32)
        n, dim = len(inputs), self.dim
        fresh = len(rows) - n
        # One copy of each table, learned rows first, content-only rows (scaled content) after.
        served_inputs = np.empty((len(rows), dim), dtype=inputs.dtype)
        served_outputs = np.empty((len(rows), dim), dtype=outputs.dtype)
        served_inputs[:n], served_outputs[:n] = inputs, outputs
        np.multiply(content[n:, :dim], norm, out=served_inputs[n:])
        np.multiply(content[n:, dim:], norm, out=served_outputs[n:])
        low = np.flatnonzero((counts < self.blend_below) & (rows[:n] >= 0))
        blend_rows(
            low,
            learned_weight(counts[low].astype(np.float32), self.blend_half_life),
            np.ascontiguousarray(inputs),
            np.ascontiguousarray(outputs),
            content,
            float(norm),
            served_inputs,
            served_outputs,
        )
        return ServedRows(
            self.ids,
            served_inputs,
            served_outputs,
            np.concatenate([counts, np.zeros(fresh, dtype=counts.dtype)]),
            np.concatenate([counts == 0, np.ones(fresh, dtype=bool)]),
            content,
        )


class ColdStart:
    def __init__(
        self,
        config: ContentConfig,
        dim: int,
        torch_threads: int = 1,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        """``cpu_clock`` times the tower's training: this thread's CPU by default, as the updater
        needs (its Kafka and Ray threads run beside the loop, but torch's intra-op threads are
        missed when ``torch_threads`` > 1); eval, whose learner runs alone in its process while it
        learns, passes ``time.process_time`` to count every thread, as it does for the learner."""
        self.config = config
        self._cpu_clock = cpu_clock
        self.dim = dim
        self.tower = ContentTower(config, 2 * dim, torch_threads=torch_threads)
        self.metadata: dict[str, ItemMeta] = {}
        self.reservoir = PairReservoir(config.reservoir_pairs, config.seed)
        self.temperature = TemperatureFit(config.temperature)
        # Interaction count above which the blend leaves the learned vector as it is.
        self._blend_below = blend_below(config.blend_half_life)
        self._budget = 0.0  # tower pairs earned by learner events and not trained yet
        self._new_item_events: deque[tuple[tuple[str, ...], str]] = deque(maxlen=config.calibration_events)
        # CPU seconds (``cpu_clock``) spent training the tower (keeping its pairs, pulling, stepping):
        # what the cold-start issue's budget counts. Not checkpointed: a process-lifetime counter.
        self.training_cpu_s = 0.0
        self._calibrations = 0
        # Unit content vectors, one row per item with metadata, each recomputed once the tower has
        # moved reencode_every_steps steps since it was encoded, at most reencode_chunk rows per
        # refresh (oldest first): re-encoding the whole catalogue at once took seconds at 100k items
        # and republished every cold row in one delta.
        self._row: dict[str, int] = {}
        self._item_of_row: list[str | None] = []  # None: a forgotten item's row, until compaction
        self._forgotten_rows: set[int] = set()  # ditto, by row
        # ``_content`` and ``_encoded_step`` are views of the used rows of buffers that grow by
        # doubling: appending a batch to a 1M-row table copied all of it (0.5 GB) per batch.
        self._content_buffer = np.zeros((0, 2 * dim), dtype=np.float32)
        self._step_buffer = np.zeros(0, dtype=np.int64)
        self._content = self._content_buffer[:0]
        self._encoded_step = self._step_buffer[:0]  # tower steps when each row was encoded
        self._seconds_per_item = 0.0  # measured cost of encoding one newly listed item (0: unknown)
        # Items with metadata whose content row is missing or outdated, oldest listing first.
        self._unencoded: dict[str, None] = {}
        self._changed: set[str] = set()  # items whose content vector changed since the last complete()
        # The reservoir may hold pairs of items no longer listed (deleted, or gone while the updater was
        # down): they are dropped before the tower next trains (``_drop_unlisted_pairs``).
        self._unlisted_pairs = False
        # Items whose last catalogue record is a tombstone: never served, even when clicked again,
        # until listed again. Checkpointed, since compaction drops a tombstone after a while
        # (delete.retention.ms) and the items topic re-read at a start would no longer say so.
        self.deleted: set[str] = set()
        self._removed: set[str] = set()  # deleted since the served rows were last taken (take_removed)
        # Items with a learned row in the chain the updater publishes (``published_learned``), and how
        # many of them have a content row: the cold rows are the others, counted as both sets change,
        # since intersecting them at each snapshot cost 23-38 ms at 100,000 learned items, 180-230 ms
        # at a million (BENCHMARKS.md, "Twenty-sixth session").
        self.learned: set[str] = set()
        self._learned_listed = 0

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        for item in items:
            self.metadata[item.item_id] = item
            self.deleted.discard(item.item_id)
            self._removed.discard(item.item_id)
            self._unencoded.pop(item.item_id, None)  # (re-)encode with this metadata, after the older ones
            self._unencoded[item.item_id] = None
            self._changed.add(item.item_id)

    def forget(self, item_id: str) -> None:
        """The item was deleted from the catalogue (a tombstone on the items topic)."""
        self.deleted.add(item_id)
        self._removed.add(item_id)
        if self.metadata.pop(item_id, None) is not None:
            self._unlisted_pairs = True
        self._unencoded.pop(item_id, None)
        row = self._row.pop(item_id, None)
        if row is not None:
            self._item_of_row[row] = None
            self._forgotten_rows.add(row)
            self._learned_listed -= item_id in self.learned

    def published_learned(self, item_ids: Iterable[str], full: bool) -> None:
        """These items have a learned row in the snapshot just taken: every such item, for a ``full``
        one; for a delta, those it wrote, added to the earlier ones."""
        row = self._row
        if full:
            self.learned = set(item_ids)
            self._learned_listed = len(row.keys() & self.learned)
            return
        learned = self.learned
        for item in item_ids:
            if item not in learned:
                learned.add(item)
                self._learned_listed += item in row

    @property
    def cold_listed(self) -> int:
        """Items with a content row and no learned row in the published chain: the cold ones."""
        return len(self._row) - self._learned_listed

    def lost_learned(self, item_ids: Iterable[str]) -> None:
        """These items' learned rows are no longer served (expired, or deleted from the catalogue):
        listed again, such an item is served by its content until it is learned again."""
        row, learned = self._row, self.learned
        for item in item_ids:
            if item in learned:
                learned.discard(item)
                self._learned_listed -= item in row

    def unlearn(self, item_ids: Collection[str]) -> None:
        """These items lost their learned rows (expired from the shards): their pairs leave the
        reservoir, since the tower would pull fresh random rows for them as targets, and the next
        ``plan`` gives each listed one its content-only row again, as to an item never clicked."""
        if not item_ids:
            return
        gone = set(item_ids)
        self.reservoir.keep(lambda a, b: a not in gone and b not in gone)
        meta = self.metadata
        self._changed.update(i for i in gone if i in meta)

    def take_removed(self) -> set[str]:
        """Items deleted since the last call, for a delta to remove from the served rows."""
        removed, self._removed = self._removed, set()
        return removed

    def remember_pairs(self, left_keys: np.ndarray, right_keys: np.ndarray, names: Sequence[str]) -> None:
        """Offer a trained batch of co-occurring pairs (learner keys, named by ``names[key]``) to the
        reservoir. Only the pairs it takes are named; those with an item without metadata are dropped
        (they still count as stream positions, so the sample stays uniform over the pairs it keeps)."""
        started = self._cpu_clock()
        offsets, slots = self.reservoir.take(len(left_keys))
        left = list(map(names.__getitem__, left_keys[offsets].tolist()))
        right = list(map(names.__getitem__, right_keys[offsets].tolist()))
        listed = self.metadata.__contains__
        if not (all(map(listed, left)) and all(map(listed, right))):  # usual case: every item is listed
            kept = [i for i, (a, b) in enumerate(zip(left, right, strict=True)) if listed(a) and listed(b)]
            slots, left, right = slots[kept], [left[i] for i in kept], [right[i] for i in kept]
        self.reservoir.put(slots, left, right)
        self.training_cpu_s += self._cpu_clock() - started

    def train(self, events: int, position: dict[str, int], inputs: np.ndarray, outputs: np.ndarray) -> int:
        """Tower steps earned by ``events`` learner events, on reservoir pairs whose items both have
        learned rows (at ``position`` in ``inputs``/``outputs``). Returns the steps taken."""
        started = self._cpu_clock()
        self._drop_unlisted_pairs()
        self._budget += events * self.config.train_pairs_per_event
        taken = 0
        while self._budget >= self.config.train_batch:
            if not self._step(position, inputs, outputs):
                self._budget = 0.0  # nothing to train on yet: earn afresh rather than burst later
                break
            self._budget -= self.config.train_batch
            taken += 1
        self.training_cpu_s += self._cpu_clock() - started
        return taken

    def train_pulling(self, events: int, rows: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]) -> int:
        """``train`` for a learner whose rows live elsewhere (the updater's shards): ``rows(ids)``
        returns the learned (inputs, outputs) of ``ids`` and is called only when a step is due, for
        the items of the pairs the due steps will draw, so a poll that earns no step costs nothing."""
        self._drop_unlisted_pairs()  # before the draws: each drawn pair's items have metadata
        earned = self._budget + events * self.config.train_pairs_per_event
        steps = int(earned // self.config.train_batch)
        if not steps or not len(self.reservoir):
            if len(self.reservoir):
                self._budget = earned
                return 0
            return self.train(
                events, {}, np.zeros((0, self.dim), np.float32), np.zeros((0, self.dim), np.float32)
            )
        # Only the items of the pairs these steps will draw: a few thousand rows, not the reservoir's.
        started = self._cpu_clock()
        reservoir, ids = self.reservoir, set()
        for step in range(self.tower.steps, self.tower.steps + steps):
            for i in self._draw(step).tolist():
                ids.update((reservoir.left[i], reservoir.right[i]))
        ids = sorted(ids)
        inputs, outputs = rows(ids)
        self.training_cpu_s += self._cpu_clock() - started
        return self.train(events, dict(zip(ids, range(len(ids)), strict=True)), inputs, outputs)

    def _draw(self, step: int) -> np.ndarray:
        """Reservoir positions of the pairs tower step ``step`` trains on (ascending)."""
        size = len(self.reservoir)
        rng = np.random.default_rng([self.config.seed, step])
        chosen = rng.choice(size, min(size, self.config.train_batch), replace=False) if size else []
        return np.sort(np.asarray(chosen, dtype=np.int64))

    def _drop_unlisted_pairs(self) -> None:
        """Drop the reservoir's pairs with an item no longer listed: the tower trains on metadata, and
        a deleted item's pairs would otherwise hold their slots until algorithm R replaced them, ever
        more slowly as the stream grows (a tower step that drew one raised KeyError)."""
        if self._unlisted_pairs:
            listed = self.metadata
            self.reservoir.keep(lambda a, b: a in listed and b in listed)
            self._unlisted_pairs = False

    def _step(self, position: dict[str, int], inputs: np.ndarray, outputs: np.ndarray) -> bool:
        reservoir = self.reservoir
        pairs = [
            (reservoir.left[i], reservoir.right[i])
            for i in self._draw(self.tower.steps).tolist()
            if reservoir.left[i] in position and reservoir.right[i] in position
        ]
        if len(pairs) < 2:
            return False
        meta = self.metadata
        left = [position[a] for a, _ in pairs]
        right = [position[b] for _, b in pairs]
        self.tower.train_step(
            [meta[a] for a, _ in pairs],
            [meta[b] for _, b in pairs],
            np.hstack([inputs[left], outputs[left]]),
            np.hstack([inputs[right], outputs[right]]),
        )
        return True

    def complete(self, *args, **kwargs) -> ServedRows:
        """The served rows at once: ``plan(...)`` (same arguments), assembled on this thread."""
        return self.plan(*args, **kwargs).assemble()

    def plan(
        self,
        ids: list[str],
        inputs: np.ndarray,
        outputs: np.ndarray,
        counts: np.ndarray,
        learned_elsewhere: Collection[str] = (),
        changed_only: bool = False,
        encode_limit: int | None = None,
    ) -> ServedRowsPlan:
        """The served table, up to its bulk copies (``ServedRowsPlan.assemble``, which may run on
        another thread while this object goes on): learned rows blended with content for items with
        few interactions, plus a content-only row for every item with metadata and no learned row, and
        every row's unit content vector. ``learned_elsewhere``: items with a learned row not among
        ``ids`` (a delta snapshot holds only the rows changed since the last one); they get no
        content-only row. ``changed_only``: content-only rows only for items whose content vector
        changed since the last call (new or updated metadata, a re-encoding), as a delta needs: the
        cost then follows what changed, not the catalogue. ``encode_limit``: encode at most this many
        newly listed items now (oldest first); the others get their content-only rows in later calls,
        once encoded (``encode_listed``). Items among ``ids`` are encoded now whatever the limit: a
        clicked item's row is blended with its content from its first publish."""
        if self._unencoded:  # else a lookup per id, every publish, for nothing
            self._encode_new(list(filter(self._unencoded.__contains__, ids)))
        self._refresh_content(encode_limit=encode_limit)
        id_rows = self._rows_of(ids)
        if changed_only:
            known, meta, row = set(ids), self.metadata, self._row
            fresh = [
                i
                for i in self._changed
                if i in meta and i in row and i not in known and i not in learned_elsewhere
            ]
            fresh_rows = np.fromiter(map(row.__getitem__, fresh), dtype=np.int64, count=len(fresh))
        else:
            fresh_rows = self._rows_without(id_rows, self._rows_of(learned_elsewhere))
            items = self._item_of_row
            fresh = list(map(items.__getitem__, fresh_rows.tolist()))
        self._changed = set()
        return ServedRowsPlan(
            ids + fresh,
            np.concatenate([id_rows, fresh_rows]),
            self._content,
            np.float32(self.tower.vector_norm),
            self.dim,
            inputs,
            outputs,
            counts,
            self._blend_below,
            self.config.blend_half_life,
        )

    def _rows_of(self, items: Collection[str]) -> np.ndarray:
        """Each item's content row, -1 for an item without one."""
        return np.fromiter(map(self._row.get, items, itertools.repeat(-1)), dtype=np.int64, count=len(items))

    def _rows_without(self, *taken: np.ndarray) -> np.ndarray:
        """The content rows of every listed item but those in ``taken`` (rows, -1 for none), in row
        order: a full snapshot's content-only rows, found by a mask rather than by walking the
        catalogue's ids (at 1M items the walk held the updater's loop ~1 s per full snapshot). Every
        item with a row has metadata."""
        listed = np.ones(len(self._content), dtype=bool)
        listed[np.fromiter(self._forgotten_rows, dtype=np.int64, count=len(self._forgotten_rows))] = False
        for rows in taken:
            listed[rows[rows >= 0]] = False
        return np.flatnonzero(listed)

    def encode_listed(self, budget_s: float, clock: Callable[[], float] = time.perf_counter) -> int:
        """Encode newly listed items, oldest first, for about ``budget_s`` seconds (at least one batch,
        each sized from the measured cost per item to end near the deadline); the next ``complete``
        publishes them. Returns how many were encoded. The updater calls it in its loop's spare time,
        so a bulk listing is served as fast as the loop can afford without holding a snapshot."""
        deadline, encoded = clock() + budget_s, 0
        while self._unencoded:
            started = clock()
            left = deadline - started
            size = 256 if self._seconds_per_item == 0 else int(left / self._seconds_per_item)
            batch = list(itertools.islice(self._unencoded, min(max(size, 16), 4096)))
            self._encode_new(batch)
            spent = (clock() - started) / len(batch)
            # A moving average: the cost per item varies with how many titles are new to the caches.
            self._seconds_per_item = (
                spent if self._seconds_per_item == 0 else 0.7 * self._seconds_per_item + 0.3 * spent
            )
            encoded += len(batch)
            if clock() >= deadline:
                break
        return encoded

    @property
    def listed_unencoded(self) -> int:
        """Items with metadata waiting for their first content vector (or one for new metadata)."""
        return len(self._unencoded)

    def _encode_new(self, fresh: list[str]) -> None:
        """Encode ``fresh`` (items waiting in ``_unencoded``): rows for the new ones, changed."""
        if not fresh:
            return
        new = [i for i in fresh if i not in self._row]
        self._learned_listed += sum(i in self.learned for i in new)
        start = len(self._content)
        self._row.update((item, start + r) for r, item in enumerate(new))
        self._item_of_row.extend(new)
        self._grow(len(new))
        at = np.fromiter((self._row[i] for i in fresh), dtype=np.int64, count=len(fresh))
        self._content[at] = self.tower.encode_unit([self.metadata[i] for i in fresh])
        self._encoded_step[at] = self.tower.steps
        self._changed.update(fresh)
        for item in fresh:
            del self._unencoded[item]

    def _grow(self, rows: int) -> None:
        """Make ``rows`` more rows in use (the caller writes them), doubling the buffers when full."""
        used = len(self._content) + rows
        if used > len(self._content_buffer):
            capacity = max(used, 2 * len(self._content_buffer), 1024)
            content = np.zeros((capacity, self._content_buffer.shape[1]), np.float32)
            steps = np.zeros(capacity, np.int64)
            content[: len(self._content)] = self._content
            steps[: len(self._content)] = self._encoded_step
            self._content_buffer, self._step_buffer = content, steps
        self._content = self._content_buffer[:used]
        self._encoded_step = self._step_buffer[:used]

    def _refresh_content(self, reencode: bool = True, encode_limit: int | None = None) -> None:
        """Encode items with new metadata (changed content; up to ``encode_limit`` of them, oldest
        listing first, all without it), then, with ``reencode``, re-encode up to
        ``reencode_chunk`` rows the tower has moved ``reencode_every_steps`` steps past, oldest first;
        those whose vector moved by more than ``reencode_tolerance`` (cosine distance) changed too."""
        steps = self.tower.steps
        stale = np.flatnonzero(self._encoded_step <= steps - self.config.reencode_every_steps)
        if not reencode:
            stale = stale[:0]
        if len(stale) > self.config.reencode_chunk:
            oldest = np.argpartition(self._encoded_step[stale], self.config.reencode_chunk)
            stale = stale[oldest[: self.config.reencode_chunk]]
        items = self._item_of_row
        stale_ids = [
            items[r] for r in stale.tolist() if items[r] is not None and items[r] not in self._unencoded
        ]
        if not self._unencoded and not stale_ids:
            return
        if len(self._content) > 1024 and len(self._row) < len(self._content) // 2:
            self._compact()
        self._encode_new(list(itertools.islice(self._unencoded, encode_limit)))
        if not stale_ids:
            return
        at = np.fromiter((self._row[i] for i in stale_ids), dtype=np.int64, count=len(stale_ids))
        before = self._content[at]
        encoded = self.tower.encode_unit([self.metadata[i] for i in stale_ids])
        self._content[at] = encoded
        self._encoded_step[at] = steps
        moved = 1.0 - np.einsum("ij,ij->i", before, encoded) > self.config.reencode_tolerance
        self._changed.update(item for item, m in zip(stale_ids, moved.tolist(), strict=True) if m)

    def _compact(self) -> None:
        """Drop the rows of forgotten items."""
        kept = np.fromiter(self._row.values(), dtype=np.int64, count=len(self._row))
        self._content_buffer, self._step_buffer = self._content[kept], self._encoded_step[kept]
        self._content, self._encoded_step = self._content_buffer, self._step_buffer
        self._item_of_row = list(self._row)
        self._row = {item: r for r, item in enumerate(self._item_of_row)}
        self._forgotten_rows = set()

    def state(self) -> dict:
        """The learned part (tower, reservoir, temperature evidence, budget) and the deleted items
        for a checkpoint. The metadata is not in it: the items topic is re-read at every start."""
        return {
            "tower": self.tower.state(),
            "reservoir": self.reservoir.state(),
            "temperature": {"loglik": self.temperature.loglik.copy(), "evidence": self.temperature.evidence},
            "budget": self._budget,
            "new_item_events": [[list(prefix), target] for prefix, target in self._new_item_events],
            "calibrations": self._calibrations,
            "deleted": list(self.deleted),  # not sorted: 0.6 s of the loop at a million deleted items
        }

    def restore(self, state: dict) -> None:
        self.tower.restore(state["tower"])
        self.reservoir.restore(state["reservoir"])
        loglik = np.asarray(state["temperature"]["loglik"], dtype=np.float64)
        if loglik.shape != self.temperature.loglik.shape:
            raise ValueError(
                f"cold start state: temperature grid of {loglik.shape}, expected {self.temperature.loglik.shape}"
            )
        self.temperature.loglik = loglik
        self.temperature.evidence = float(state["temperature"]["evidence"])
        self._budget = float(state["budget"])
        self._new_item_events.clear()
        self._new_item_events.extend((tuple(prefix), target) for prefix, target in state["new_item_events"])
        self._calibrations = int(state["calibrations"])
        # Whatever the items topic said since (listed again, or deleted) wins. Older checkpoints: none.
        restored = {str(item_id) for item_id in state.get("deleted", ())} - self.metadata.keys()
        self.deleted |= restored
        self._removed |= self.deleted
        self._unlisted_pairs = True  # items may have been deleted while the state was on disk
        # Content vectors are re-encoded with the restored tower.
        self._row, self._item_of_row, self._forgotten_rows = {}, [], set()
        self._learned_listed = 0
        # New buffers: a served-rows plan may still read the old ones (ServedRowsPlan).
        self._content_buffer = np.zeros((0, self._content_buffer.shape[1]), dtype=np.float32)
        self._step_buffer = np.zeros(0, dtype=np.int64)
        self._content, self._encoded_step = self._content_buffer[:0], self._step_buffer[:0]
        self._unencoded, self._changed = dict.fromkeys(self.metadata), set(self.metadata)

    def record_new_item(self, prefix: Sequence[str], target: str) -> None:
        """A session went on to an item the learner had never seen: evidence for the temperature."""
        if prefix and target in self.metadata:
            self._new_item_events.append((tuple(prefix), target))

    def calibrate_on_content(self) -> None:
        """``calibrate`` without a served table at hand (the updater publishes deltas): the items
        that were cold when the new-item events arrived are those with metadata and no learned row
        at the last publish (``published_learned``). Costs the events and the
        candidate sample, not the catalogue: at 1M items a table of every cold row took seconds.
        Nothing is encoded here: a target without a content row was not served when the event came,
        so it was no candidate and is no evidence (and encoding stays one chunk per snapshot)."""
        events = list(self._new_item_events)
        self._new_item_events.clear()
        if not events:
            return
        row, learned = self._row, self.learned
        asked = [
            (prefix, row[target]) for prefix, target in events if target in row and target not in learned
        ]
        queries, targets = _event_queries(asked, row, self._content)
        cold_count = self.cold_listed
        if not len(targets) or cold_count < 2:
            return
        rng = self._calibration_rng()
        # Uniform over cold rows by rejection from all rows, drawing enough for the cold share.
        wanted = min(cold_count, self.config.calibration_candidates)
        draws = min(len(self._content), int(1.2 * wanted * len(row) / cold_count) + 64, 64 * wanted)
        items = self._item_of_row
        drawn = rng.choice(len(self._content), draws, replace=False).tolist()
        sample = [r for r in drawn if items[r] is not None and items[r] not in learned][:wanted]
        if not sample:  # cold rows are rare and none was drawn: no evidence this time
            return
        self._observe_cold(queries, targets, np.asarray(sample, dtype=np.int64), self._content, cold_count)

    def calibrate(self, served: Embeddings) -> None:
        """Fit the cold temperature on the new-item events since the last call, scored by ``served``,
        the table that answered them."""
        events = list(self._new_item_events)
        self._new_item_events.clear()
        cold_rows = served.cold_rows
        if served.content is None or len(cold_rows) < 2 or not events:
            return
        position, cold = served.position, served.cold
        asked = [(prefix, position[t]) for prefix, t in events if t in position and cold[position[t]]]
        queries, targets = _event_queries(asked, position, served.content)
        if not len(targets):
            return
        rng = self._calibration_rng()
        sample = cold_rows[
            rng.choice(len(cold_rows), min(len(cold_rows), self.config.calibration_candidates), replace=False)
        ]
        self._observe_cold(queries, targets, sample, served.content, len(cold_rows))

    def _calibration_rng(self) -> np.random.Generator:
        rng = np.random.default_rng([self.config.seed, self._calibrations])
        self._calibrations += 1
        return rng

    def _observe_cold(
        self, q: np.ndarray, target_rows: np.ndarray, sample: np.ndarray, content: np.ndarray, cold_count: int
    ) -> None:
        """Evidence for the temperature: each query's target against a ``sample`` of the
        ``cold_count`` cold rows (rows of ``content``), each standing for as many others."""
        candidates = q @ content[sample].T
        is_target = sample[None, :] == target_rows[:, None]
        candidates[is_target] = -np.inf
        sampled_others = len(sample) - is_target.sum(axis=1)
        log_scale = np.log((cold_count - 1) / np.maximum(sampled_others, 1))
        target_scores = np.einsum("ij,ij->i", q, content[target_rows])
        self.temperature.observe(target_scores, candidates, log_scale)


def _event_queries(
    asked: list[tuple[Sequence[str], int]], row: Mapping[str, int], content: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """New-item events (prefix, target's row): the content queries of those whose prefix has one, and
    their targets' rows."""
    queries, have = content_queries(content, [_last_rows(prefix, row) for prefix, _ in asked])
    return queries, np.asarray([asked[i][1] for i in have.tolist()], dtype=np.int64)


def _last_rows(prefix: Sequence[str], row: Mapping[str, int]) -> list[int]:
    """Rows of the last ``SESSION_ITEMS`` items of ``prefix`` that ``row`` has, oldest first: what a
    query is made of, found from the end (a MovieLens prefix holds 65 items on average)."""
    found: list[int] = []
    for item in reversed(prefix):
        at = row.get(item)
        if at is not None:
            found.append(at)
            if len(found) == SESSION_ITEMS:
                break
    return found[::-1]
