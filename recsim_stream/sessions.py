"""Per-user session windows in event time, with one watermark per Kafka partition.

Pairs are made on arrival (pairs.py), so a session is an open, growing list that the pair
generator reads right after each ``add()``; nothing waits for a session to close. Closing only
frees memory and yields a summary for metrics.

Rules:
- an event with a ``session_id`` joins the session (user_id, session_id); an event without one
  joins the open session of its user that it falls in or lies within ``gap_s`` of (the nearest
  one if two qualify), else it starts a new session. A late event that bridges two sessions joins
  the nearer one and does not merge them: their pairs are already out.
- a session holding ``max_events`` events, or which the event would stretch beyond
  ``max_duration_s``, is sealed and the event starts its successor (bounds memory per bot user).
  Parts of a cut session may overlap in time when events arrive out of order.
- watermark of a partition = newest ts seen on it - ``allowed_lateness_s``; an event older than
  its partition's watermark is LATE (a ``BadEvent`` for the dead-letter topic). Out-of-order
  events within the lateness are accepted; a session's items keep arrival order.
- a session closes when its newest event is older than watermark - ``gap_s``: no event that is
  not late can join it any more, so closing never splits a session.
- a *repeat* is an event whose item equals the session's previous event's item: it adds no item
  to the session's sequence, is not a prediction target and makes no window pairs; its kind
  still counts (a repeat purchase marks the session converted).

State is per partition (so a rebalance can hand partitions over through a checkpoint) and made
of plain values (msgpack-serialisable); restoring then continuing equals continuing.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from recsim_stream.config import SessionConfig
from recsim_stream.events import BadEvent, BadReason, EventFields, EventKind

ItemT = TypeVar("ItemT", bound=Hashable)

STATE_VERSION = 1


class Session(Generic[ItemT]):
    """One open session. Its lists are live: read them right after ``add()``, do not keep them."""

    __slots__ = (
        "partition",
        "serial",
        "user_id",
        "session_id",
        "start",
        "end",
        "n_events",
        "sealed",
        "items",
        "seen",
        "purchased",
        "carted",
    )

    def __init__(self, partition: int, serial: int, user_id: str, session_id: str | None, ts: float) -> None:
        self.partition = partition
        self.serial = serial  # unique within the partition: the key survives checkpoints
        self.user_id = user_id
        self.session_id = session_id
        self.start = ts
        self.end = ts
        self.n_events = 0
        self.sealed = False  # cut at max_events / max_duration_s: takes no more events
        self.items: list[ItemT] = []  # item sequence in arrival order, consecutive repeats collapsed
        self.seen: dict[ItemT, None] = {}  # distinct items, first-seen order (a dict: ordered)
        self.purchased: list[ItemT] = []  # distinct purchased items, first-purchase order
        self.carted: list[ItemT] = []  # distinct carted items

    @property
    def key(self) -> tuple[int, int]:
        return (self.partition, self.serial)

    @property
    def converted(self) -> bool:
        return bool(self.purchased)

    def _to_state(self) -> list:
        return [
            self.serial,
            self.user_id,
            self.session_id,
            self.start,
            self.end,
            self.n_events,
            self.sealed,
            list(self.items),
            list(self.seen),
            list(self.purchased),
            list(self.carted),
        ]

    @classmethod
    def _from_state(cls, partition: int, row: list) -> Session:
        serial, user_id, session_id, start, end, n_events, sealed, items, seen, purchased, carted = row
        session = cls(partition, serial, user_id, session_id, start)
        session.end = end
        session.n_events = n_events
        session.sealed = sealed
        session.items = list(items)
        session.seen = dict.fromkeys(seen)
        session.purchased = list(purchased)
        session.carted = list(carted)
        return session


class Arrival(Generic[ItemT]):
    """What one accepted event did to its session; valid until the next ``add()``.

    Holds a reference to the live session instead of copies, so the per-event cost does not grow
    with the session's length.
    """

    __slots__ = ("session", "item", "kind", "repeat", "first_seen", "first_purchase", "first_cart")

    def __init__(
        self,
        session: Session[ItemT],
        item: ItemT,
        kind: EventKind,
        repeat: bool,
        first_seen: bool,
        first_purchase: bool,
        first_cart: bool,
    ) -> None:
        self.session = session
        self.item = item
        self.kind = kind
        self.repeat = repeat  # same item as the session's previous event
        self.first_seen = first_seen  # the item's first event in this session
        self.first_purchase = first_purchase  # the item's first purchase in this session
        self.first_cart = first_cart  # the item's first cart in this session

    def context(self, window: int) -> list[ItemT]:
        """Up to ``window`` items of the session's (repeat-collapsed) sequence before this event."""
        items = self.session.items
        end = len(items) if self.repeat else len(items) - 1
        return items[max(0, end - window) : end]

    def prefix(self) -> list[ItemT]:
        """The session's whole (repeat-collapsed) sequence before this event; a copy."""
        return self.context(len(self.session.items))


@dataclass(frozen=True, slots=True)
class ClosedSession:
    """Summary of a session leaving memory, for metrics."""

    key: tuple[int, int]  # (partition, serial)
    user_id: str
    session_id: str | None
    n_events: int
    n_items: int  # distinct items
    converted: bool
    start: float
    end: float


def _summary(session: Session) -> ClosedSession:
    return ClosedSession(
        session.key,
        session.user_id,
        session.session_id,
        session.n_events,
        len(session.seen),
        session.converted,
        session.start,
        session.end,
    )


class _Partition:
    """One partition's open sessions, with what ``advance`` needs to find the closable ones fast.

    Every open session sits in exactly one of two queues under a lower bound of its ``end``: ``fresh``
    (new sessions in creation order, under the watermark at creation, which no accepted event is
    older than: the bounds ascend, so a deque) or ``recheck`` (a heap, under the ``end`` it had when
    ``advance`` last looked). ``end`` only grows, so ``advance`` only looks at sessions whose bound
    is behind the cutoff instead of scanning them all.
    """

    __slots__ = ("max_ts", "next_serial", "open", "n_open", "fresh", "recheck")

    def __init__(self, max_ts: float, next_serial: int = 0) -> None:
        self.max_ts = max_ts
        self.next_serial = next_serial
        # (user_id, session_id or None) -> open sessions of that key, oldest first (usually one)
        self.open: dict[tuple[str, str | None], list[Session]] = {}
        self.n_open = 0
        self.fresh: deque[tuple[float, Session]] = deque()
        self.recheck: list[tuple[float, int, Session]] = []  # (end bound, serial, session)

    def admit(self, session: Session, watermark: float) -> None:
        self.n_open += 1
        self.fresh.append((watermark, session))

    def settle(self, cutoff: float, closed: list[ClosedSession]) -> None:
        """Close every session whose end is behind ``cutoff``; requeue the rest that were looked at."""
        fresh, recheck = self.fresh, self.recheck
        looked: list[Session] = []
        while fresh and fresh[0][0] < cutoff:
            looked.append(fresh.popleft()[1])
        while recheck and recheck[0][0] < cutoff:
            looked.append(heapq.heappop(recheck)[2])
        for session in looked:
            if session.end >= cutoff:
                heapq.heappush(recheck, (session.end, session.serial, session))
                continue
            key = (session.user_id, session.session_id)
            chain = self.open[key]
            chain.remove(session)
            if not chain:
                del self.open[key]
            self.n_open -= 1
            closed.append(_summary(session))

    def clear(self) -> list[ClosedSession]:
        closed = [_summary(s) for chain in self.open.values() for s in chain]
        self.open.clear()
        self.fresh.clear()
        self.recheck.clear()
        self.n_open = 0
        return closed


class SessionWindows(Generic[ItemT]):
    """Assigns events to sessions, refuses late ones, closes sessions behind the watermark."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._gap = config.gap_s
        self._lateness = config.allowed_lateness_s
        self._max_events = config.max_events
        self._max_duration = config.max_duration_s
        self._partitions: dict[int, _Partition] = {}

    def add(self, event: EventFields, partition: int, item: ItemT) -> Arrival[ItemT] | BadEvent:
        """Put ``event`` (whose item is already interned as ``item``) into its session."""
        ts = event.ts
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(ts)
        elif ts > part.max_ts:
            part.max_ts = ts
        elif ts < part.max_ts - self._lateness:
            return BadEvent(
                BadReason.LATE,
                f"event ts {ts} of user {event.user_id!r} is {part.max_ts - ts:.3f} s behind the newest "
                f"event of partition {partition}; allowed lateness is {self._lateness} s",
            )
        user_id, session_id = event.user_id, event.session_id
        key = (user_id, session_id)
        chain = part.open.get(key)
        session = None
        if chain is not None:
            session = chain[-1] if session_id is not None else self._nearest(chain, ts)
            if session is not None and (
                session.sealed
                or session.n_events >= self._max_events
                or (ts if ts > session.end else session.end) - (ts if ts < session.start else session.start)
                > self._max_duration
            ):
                session.sealed = True
                session = None
        if session is None:
            session = Session(partition, part.next_serial, user_id, session_id, ts)
            part.next_serial += 1
            part.admit(session, part.max_ts - self._lateness)
            if chain is None:
                part.open[key] = [session]
            else:
                chain.append(session)
        elif ts > session.end:
            session.end = ts
        elif ts < session.start:
            session.start = ts
        session.n_events += 1

        items = session.items
        repeat = bool(items) and items[-1] == item
        if not repeat:
            items.append(item)
        seen = session.seen
        first_seen = item not in seen
        if first_seen:
            seen[item] = None
        kind = event.kind
        first_purchase = first_cart = False
        if kind is EventKind.PURCHASE:
            if item not in session.purchased:
                session.purchased.append(item)
                first_purchase = True
        elif kind is EventKind.CART and item not in session.carted:
            session.carted.append(item)
            first_cart = True
        return Arrival(session, item, kind, repeat, first_seen, first_purchase, first_cart)

    def _nearest(self, chain: list[Session], ts: float) -> Session | None:
        """The unsealed session of a user that ``ts`` falls in or lies within gap_s of; the nearest."""
        best = None
        best_distance = self._gap
        for session in chain:  # later sessions win ties: iterate oldest first, compare with <=
            if session.sealed:
                continue
            if ts < session.start:
                distance = session.start - ts
            elif ts > session.end:
                distance = ts - session.end
            else:
                distance = 0.0
            if distance <= best_distance:
                best, best_distance = session, distance
        return best

    def watermark(self, partition: int) -> float | None:
        """Events older than this are late; None before the partition's first event."""
        part = self._partitions.get(partition)
        return None if part is None else part.max_ts - self._lateness

    def open_sessions(self) -> int:
        return sum(part.n_open for part in self._partitions.values())

    def advance(self, partition: int | None = None) -> list[ClosedSession]:
        """Close the sessions no future non-late event can join; all partitions when None.

        Costs the number of sessions whose end bound the cutoff passed (see ``_Partition``), not
        the number open. Returns them ordered by key.
        """
        partitions = self._partitions if partition is None else [partition]
        closed: list[ClosedSession] = []
        for p in partitions:
            part = self._partitions.get(p)
            if part is not None:
                part.settle(part.max_ts - self._lateness - self._gap, closed)
        closed.sort(key=lambda c: c.key)
        return closed

    def close(self, partitions: Iterable[int] | None = None) -> list[ClosedSession]:
        """Close every open session of ``partitions`` (all when None), e.g. at the end of a stream.

        The partitions' watermarks are kept, so late events are still refused afterwards.
        """
        chosen = list(self._partitions) if partitions is None else list(partitions)
        closed: list[ClosedSession] = []
        for p in chosen:
            part = self._partitions.get(p)
            if part is not None:
                closed.extend(part.clear())
        return closed

    def state(self, partitions: Iterable[int] | None = None) -> dict:
        """Plain-value state of ``partitions`` (all when None), for a checkpoint."""
        chosen = sorted(self._partitions) if partitions is None else sorted(partitions)
        rows = []
        for p in chosen:
            part = self._partitions.get(p)
            if part is None:
                continue
            sessions = [s._to_state() for chain in part.open.values() for s in chain]
            rows.append([p, part.max_ts, part.next_serial, sessions])
        return {"version": STATE_VERSION, "partitions": rows}

    def revoke(self, partitions: Iterable[int]) -> dict:
        """Drop the partitions this consumer no longer owns; returns their state for whoever takes them."""
        chosen = list(partitions)
        state = self.state(chosen)
        for p in chosen:
            self._partitions.pop(p, None)
        return state

    def adopt(self, state: dict) -> None:
        """Take over the partitions in ``state`` (from ``state()``/``revoke()``) after a rebalance."""
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"session state: expected version {STATE_VERSION}, got {version!r}")
        for p, max_ts, next_serial, sessions in state["partitions"]:
            if p in self._partitions:
                raise ValueError(f"session state: partition {p} is already owned by these windows")
            part = _Partition(max_ts, next_serial)
            for row in sessions:
                session = Session._from_state(p, row)
                part.open.setdefault((session.user_id, session.session_id), []).append(session)
                part.recheck.append((session.end, session.serial, session))
            part.n_open = len(part.recheck)
            heapq.heapify(part.recheck)
            self._partitions[p] = part

    @classmethod
    def restore(cls, config: SessionConfig, state: dict) -> SessionWindows:
        windows = cls(config)
        windows.adopt(state)
        return windows
