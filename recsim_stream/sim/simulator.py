"""The simulated stream: interleaved sessions of many users, new items listed over time.

Event time advances in windows of about ``_EVENTS_PER_WINDOW`` events. In each window every user whose
next session starts in it gets a whole session generated at once (numpy draws for all of them);
events falling past the window's end wait for a later window. So events leave in global event-time
order while the per-event Python work is just building the ``Event``: that is what makes it fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import SimConfig
from recsim_stream.events import Event, EventKind, ItemDeleted, ItemMeta
from recsim_stream.sim.catalogue import Catalogue
from recsim_stream.sim.users import Users

_KINDS = (EventKind.CLICK, EventKind.CART, EventKind.PURCHASE)
_CART, _PURCHASE = 1, 2
_EVENTS_PER_WINDOW = 4096
_DWELL_SIGMA = 1.0
_NEW_ITEM_HORIZON_S = 3600.0  # a new item's first clicks fall within this much event time of listing
_NEW_ITEM_MEAN_EARLY_CLICKS = 3.0


@dataclass
class _Pending:
    """Generated events not yet emitted (they fall past the current window)."""

    ts: np.ndarray
    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    session: np.ndarray  # the user's session number

    @classmethod
    def empty(cls) -> _Pending:
        i = np.zeros(0, dtype=np.int64)
        return cls(np.zeros(0), i, i, i, i)

    def concat(self, other: _Pending) -> _Pending:
        return _Pending(*(np.concatenate(pair) for pair in zip(self.fields(), other.fields(), strict=True)))

    def take(self, index: np.ndarray) -> _Pending:
        return _Pending(*(a[index] for a in self.fields()))

    def fields(self) -> tuple[np.ndarray, ...]:
        return (self.ts, self.user, self.item, self.kind, self.session)


class SimTruth:
    """Ground truth the stream was drawn from, for tests and evaluation (never for training)."""

    def __init__(self, catalogue: Catalogue, users: Users) -> None:
        self._catalogue = catalogue
        self._users = users
        self.new_items: list[str] = []  # ids listed while the stream ran, in listing order
        self.retired: list[str] = []  # ids taken off the catalogue while the stream ran, in order

    @property
    def cluster_of(self) -> dict[str, int]:
        """item id -> cluster, for every item listed so far (the initial ones and new ones)."""
        return self._catalogue.cluster_of

    def interests(self, user_id: str) -> dict[int, float]:
        """The user's current cluster -> weight."""
        u = int(user_id[1:])
        out: dict[int, float] = {}
        for cluster, weight in zip(self._users.clusters[u], self._users.weights[u], strict=True):
            if weight > 0:
                out[int(cluster)] = out.get(int(cluster), 0.0) + float(weight)
        return out


class Simulator:
    """``Simulator(config, start_ts).stream()`` yields ItemMeta | ItemDeleted | Event in event-time order.

    Deterministic for a given ``config`` (seed included) and ``start_ts``.
    """

    def __init__(self, config: SimConfig, start_ts: float) -> None:
        self.config = config
        self.start_ts = float(start_ts)
        self._rng = np.random.default_rng(config.seed)
        self.catalogue = Catalogue.generate(config, self._rng, ts=self.start_ts)
        self.users = Users(config, self._rng, self.start_ts)
        self.truth = SimTruth(self.catalogue, self.users)
        rate = config.users * config.session_events / self.users.mean_cycle_s()
        self.window_s = float(np.clip(_EVENTS_PER_WINDOW / rate, 1e-3, config.session_gap_s / 2))
        self._max_dwell_s = min(600.0, config.session_gap_s / 2)
        self._kind_p = self._per_position_kind_probabilities()
        self._pending = _Pending.empty()
        self._started = False

    def __iter__(self) -> Iterator[ItemMeta | ItemDeleted | Event]:
        return self.stream()

    def stream(self) -> Iterator[ItemMeta | ItemDeleted | Event]:
        """The initial catalogue, then events, new items and retired ones (``ItemDeleted``); stops
        after ``config.events`` events if > 0."""
        if self._started:
            raise RuntimeError("Simulator.stream() can run once; build a new Simulator to replay")
        self._started = True
        yield from list(self.catalogue.items)
        remaining = self.config.events or -1
        window = 0
        while remaining != 0:
            start = self.start_ts + window * self.window_s
            window += 1
            records, events = self._window(start, start + self.window_s, remaining)
            remaining = max(0, remaining - events) if remaining > 0 else remaining
            yield from records

    def _per_position_kind_probabilities(self) -> tuple[float, float, float]:
        # First events of sessions are always clicks; scale the others so the shares hold overall.
        c = self.config
        scale = c.session_events / (c.session_events - 1) if c.session_events > 1 else 1.0
        return c.purchase_share * scale, c.cart_share * scale, c.repeat_view * scale

    def _window(
        self, start: float, end: float, limit: int
    ) -> tuple[list[ItemMeta | ItemDeleted | Event], int]:
        fresh, new_metas = self._start_sessions(start, end)
        pool = self._pending.concat(fresh)
        due = pool.ts < end
        order = np.flatnonzero(due)
        order = order[np.argsort(pool.ts[order], kind="stable")]
        self._pending = pool.take(np.flatnonzero(~due))
        if limit > 0:
            order = order[:limit]
        emitted = pool.take(order)
        self.users.drift(len(order), self._rng)
        events = self._build_events(emitted)
        changes = sorted([*new_metas, *self._retire_items(start, end, len(events))], key=lambda r: r.ts)
        positions = np.searchsorted(emitted.ts, [r.ts for r in changes], side="left")
        records: list[ItemMeta | ItemDeleted | Event] = []
        last = 0
        for change, position in zip(changes, positions.tolist(), strict=True):
            if limit > 0 and position >= len(events):
                break  # after the stream's last event: no click will follow it
            records.extend(events[last:position])
            records.append(change)
            last = position
        records.extend(events[last:])
        return records, len(events)

    def _retire_items(self, start: float, end: float, events: int) -> list[ItemDeleted]:
        """Take items off the catalogue at random times of this window (``retired_items_per_1k_events``)."""
        rng, deleted = self._rng, []
        count = int(rng.poisson(self.config.retired_items_per_1k_events * events / 1000.0))
        for ts in np.sort(rng.uniform(start, end, count)).tolist():
            index = self.catalogue.retire(rng, ts)
            if index is None:
                break
            item_id = self.catalogue.item_ids[index]
            self.truth.retired.append(item_id)
            deleted.append(ItemDeleted(item_id, ts))
        return deleted

    def _start_sessions(self, start: float, end: float) -> tuple[_Pending, list[ItemMeta]]:
        c, rng, users = self.config, self._rng, self.users
        starters = np.flatnonzero(users.next_start < end)
        if len(starters) == 0:
            return _Pending.empty(), []
        session_start = np.maximum(users.next_start[starters], start)
        lengths = np.minimum(rng.geometric(1.0 / c.session_events, len(starters)), c.max_session_events)
        clusters = users.session_clusters(starters, rng)
        numbers = users.sessions_started[starters]
        users.sessions_started[starters] += 1

        n = int(lengths.sum())
        offsets = np.cumsum(lengths) - lengths
        session = np.repeat(np.arange(len(starters)), lengths)
        first = np.zeros(n, dtype=bool)
        first[offsets] = True
        dwell = np.clip(rng.lognormal(np.log(c.dwell_median_s), _DWELL_SIGMA, n), 0.0, self._max_dwell_s)
        dwell[first] = 0.0
        elapsed = np.cumsum(dwell)
        ts = session_start[session] + (elapsed - np.repeat(elapsed[offsets], lengths))

        event_cluster = clusters[session]
        off = rng.random(n) < c.off_cluster
        event_cluster[off] = rng.integers(0, c.clusters, int(off.sum()))
        base_items = self.catalogue.sample(event_cluster, rng)
        new_metas = self._list_new_items(start, end, ts, np.where(off, -1, event_cluster), base_items)

        # Carts, purchases and repeat views act on the previous event's item.
        p_purchase, p_cart, p_repeat = self._kind_p
        draw = rng.random(n)
        kind = np.zeros(n, dtype=np.int64)
        kind[(draw < p_purchase) & ~first] = _PURCHASE
        kind[(draw >= p_purchase) & (draw < p_purchase + p_cart) & ~first] = _CART
        follows = (draw < p_purchase + p_cart + p_repeat) & ~first
        source = np.where(follows, 0, np.arange(n))
        items = base_items[np.maximum.accumulate(source)]

        ends = ts[offsets + lengths - 1]
        gaps = c.session_gap_s + 1.0 + rng.exponential(c.session_gap_mean_s, len(starters))
        users.next_start[starters] = ends + gaps
        return _Pending(ts, starters[session], items, kind, numbers[session]), new_metas

    def _list_new_items(
        self, start: float, end: float, ts: np.ndarray, on_cluster: np.ndarray, items: np.ndarray
    ) -> list[ItemMeta]:
        """List new items in this window; each takes over a few soon-after clicks of its cluster."""
        c, rng = self.config, self._rng
        count = int(rng.poisson(c.new_items_per_1k_events * len(ts) / 1000.0))
        metas = []
        for listed in np.sort(rng.uniform(start, end, count)).tolist():
            cluster = int(rng.integers(0, c.clusters))
            meta = self.catalogue.add_item(cluster, rng, listed)
            self.truth.new_items.append(meta.item_id)
            metas.append(meta)
            soon = np.flatnonzero(
                (on_cluster == cluster) & (ts > listed) & (ts <= listed + _NEW_ITEM_HORIZON_S)
            )
            clicks = min(len(soon), 1 + int(rng.poisson(_NEW_ITEM_MEAN_EARLY_CLICKS - 1)))
            items[rng.choice(soon, clicks, replace=False)] = len(self.catalogue.items) - 1
        return metas

    def _build_events(self, e: _Pending) -> list[Event]:
        user_ids, item_ids = self.users.ids, self.catalogue.item_ids
        keys = (e.user << 32) | e.session
        unique, inverse = np.unique(keys, return_inverse=True)
        names = [f"{user_ids[k >> 32]}-{k & 0xFFFFFFFF}" for k in unique.tolist()]
        return list(
            map(
                Event,
                [user_ids[u] for u in e.user.tolist()],
                [item_ids[i] for i in e.item.tolist()],
                [_KINDS[k] for k in e.kind.tolist()],
                e.ts.tolist(),
                [names[s] for s in inverse.tolist()],
            )
        )
