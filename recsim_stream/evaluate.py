"""Prequential (test-then-train) evaluation of streaming recommenders.

Each event is first a test, then training data, in event-time order: the model is asked for its
top-k items given the session so far, the event's item is the target, and only then does the model
learn from the event. A model answers from the state it last *published* (``publish()`` is called
every ``refresh_every`` events and at the stream's end), as a live system answers from its last
snapshot, so an event can never help predict itself or anything before the next refresh.

Protocol details that the reference figures in ``shared/data/README.md`` depend on:
- events are stable-sorted by ts (ties keep input order);
- a session is the ``session_id`` when present, else a user's run of events without a gap above
  ``gap_s`` (the gap is measured between that user's events without a session_id);
- an event whose item equals the session's previous item is a *repeat*: no prediction, and models
  are told (``Step.repeat``) so they add no pairs; a repeat purchase only marks conversion;
- a prediction is made for every non-repeat event whose session prefix is non-empty; it is *cold*
  when its target appeared in no earlier event of the stream;
- "second half" means predictions made at stream positions ``>= events // 2`` (by events, not by
  predictions), so it measures the later half of the stream in time whatever the session density.

The driver is pure (no I/O): progress goes to an optional callback.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from recsim_stream.config import EvalConfig
from recsim_stream.events import Event, EventKind, ItemMeta


@dataclass(frozen=True, slots=True)
class Step:
    """One event with the session context a learner needs; passed to ``StreamModel.learn``."""

    position: int  # index of the event in the sorted stream
    session: str  # session key: "s:<session_id>" or "u:<user_id>#<n>"
    user_id: str
    prefix: tuple[str, ...]  # the session's items before this event, consecutive repeats collapsed
    item_id: str
    kind: EventKind
    ts: float
    repeat: bool  # same item as the session's previous event: adds no pairs

    @property
    def purchase(self) -> bool:
        return self.kind is EventKind.PURCHASE

    @property
    def session_id(self) -> str:
        """The session key, unique per session, stands in for an event's session id: a step has every
        field a learner reads from an event (``events.EventFields``)."""
        return self.session


@runtime_checkable
class StreamModel(Protocol):
    """What the driver needs from a model under evaluation.

    ``recommend`` and ``serves`` must answer from the state of the last ``publish()``; ``learn``
    may only change unpublished state.
    """

    name: str

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        """Item metadata known before the stream starts (may be empty)."""

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        """Up to ``k`` item ids, best first, for a session whose items so far are ``prefix``."""

    def learn(self, step: Step) -> None:
        """Take in one event (repeats included, flagged)."""

    def publish(self) -> None:
        """Make everything learned so far visible to ``recommend``/``serves``."""

    def serves(self, item_id: str) -> bool:
        """Whether the published state has a vector (or other answerable state) for ``item_id``."""


@dataclass
class ModelResult:
    """Per-prediction outcomes of one model; ``ranks[i]`` is 1-based, 0 for a miss."""

    name: str
    ranks: array = field(default_factory=lambda: array("H"))
    covered: array = field(default_factory=lambda: array("b"))  # 1 if served state had the target
    wall_s: float = 0.0  # seconds spent inside this model's calls
    learn_s: float = 0.0  # of which in observe_items, learn and publish: the learning core's cost
    # The same calls' CPU time, all of this process's threads: unlike wall time, it does not grow when
    # other processes take the cores, so costs compare across runs. Not this thread's alone: gensim
    # trains on threads of its own (GENSIM-RETRAIN read 9 us an event that way, against 98 of wall
    # time); BLAS and torch are pinned to one thread, and nothing else runs during a model's call.
    learn_cpu_s: float = 0.0


@dataclass
class EvalResult:
    events: int
    positions: array  # stream position of each prediction
    cold: array  # 1 if the prediction's target was never seen before
    models: list[ModelResult]
    k: int

    def summary(self, model: ModelResult | None) -> dict[str, float | int | None]:
        """The JSON keys of the learner issue for one model (metrics None when ``model`` is None)."""
        k = self.k
        n = len(self.positions)
        cold_idx = [i for i, c in enumerate(self.cold) if c]
        out: dict[str, float | int | None] = {
            "events": self.events,
            "predictions": n,
            f"hr@{k}": None,
            f"mrr@{k}": None,
            f"hr@{k}_second_half": None,
            "cold_predictions": len(cold_idx),
            f"cold_hr@{k}": None,
            f"warm_hr@{k}": None,
            "cold_coverage": None,
            "wall_s": None,
            "events_per_s": None,
            "learn_events_per_s": None,
            "learn_cpu_us_per_event": None,
        }
        if model is None:
            return out
        ranks = model.ranks
        half = self.events // 2
        second = [r for p, r in zip(self.positions, ranks, strict=True) if p >= half]
        if n:
            out[f"hr@{k}"] = sum(1 for r in ranks if r) / n
            out[f"mrr@{k}"] = sum(1.0 / r for r in ranks if r) / n
        if second:
            out[f"hr@{k}_second_half"] = sum(1 for r in second if r) / len(second)
        warm = n - len(cold_idx)
        if warm:
            out[f"warm_hr@{k}"] = sum(1 for i, c in enumerate(self.cold) if not c and ranks[i]) / warm
        if cold_idx:
            out[f"cold_hr@{k}"] = sum(1 for i in cold_idx if ranks[i]) / len(cold_idx)
            out["cold_coverage"] = sum(1 for i in cold_idx if model.covered[i]) / len(cold_idx)
        out["wall_s"] = model.wall_s
        out["events_per_s"] = self.events / model.wall_s if model.wall_s > 0 else None
        out["learn_events_per_s"] = self.events / model.learn_s if model.learn_s > 0 else None
        out["learn_cpu_us_per_event"] = 1e6 * model.learn_cpu_s / self.events if self.events else None
        return out


class Sessions:
    """Session keys and collapsed item prefixes, by session_id or by per-user inactivity gap."""

    def __init__(self, gap_s: float) -> None:
        self._gap_s = gap_s
        self._items: dict[str, list[str]] = {}
        self._user_session: dict[str, tuple[float, int]] = {}  # user -> (last ts, session number)

    def key(self, event: Event) -> str:
        if event.session_id:
            return "s:" + event.session_id
        last = self._user_session.get(event.user_id)
        number = 0
        if last is not None:
            last_ts, number = last
            if event.ts - last_ts > self._gap_s:
                self._items.pop(f"u:{event.user_id}#{number}", None)  # ended: free its items
                number += 1
        self._user_session[event.user_id] = (event.ts, number)
        return f"u:{event.user_id}#{number}"

    def items(self, key: str) -> list[str]:
        return self._items.setdefault(key, [])


BLOCK_EVENTS = 1000  # events each model runs in a row (see ``evaluate``)


def _blocks(total: int, refresh_every: int) -> Iterator[tuple[int, int]]:
    """(begin, end) positions of the stream's blocks: cut at every publish and every BLOCK_EVENTS."""
    begin = 0
    while begin < total:
        end = min(total, (begin // refresh_every + 1) * refresh_every, begin + BLOCK_EVENTS)
        yield begin, end
        begin = end


def _learning(result: ModelResult, work: Callable[..., None], *args: object) -> None:
    """``work(*args)``, its wall and CPU time counted as the model's learning. The CPU clock is read
    outside the wall-clock window: a read is a system call (0.6-0.8 us in a tight loop, perf_counter
    0.05 us), and inside the window it added 2.2 us to the MovieLens learner's 22.4 us an event."""
    started_cpu, started = time.process_time(), time.perf_counter()
    work(*args)
    spent = time.perf_counter() - started
    result.wall_s += spent
    result.learn_s += spent
    result.learn_cpu_s += time.process_time() - started_cpu


def sort_stream(events: Iterable[Event]) -> list[Event]:
    """Stable sort by event time: equal timestamps keep their input order."""
    return sorted(events, key=lambda e: e.ts)


def evaluate(
    events: Iterable[Event],
    models: Sequence[StreamModel],
    config: EvalConfig,
    items: Sequence[ItemMeta] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Run every model on the same stream, test-then-train; ``on_progress(done, total)`` now and then."""
    stream = sort_stream(events)
    total = len(stream)
    k = config.k
    results = [ModelResult(m.name) for m in models]
    for model, result in zip(models, results, strict=True):
        _learning(result, model.observe_items, items)
        _learning(result, model.publish)
    # The stream goes in blocks (a refresh period, at most BLOCK_EVENTS events): each model runs a
    # whole block, recommending and learning event by event, before the next model runs it, and the
    # models take turns at going first. A model then runs warm, as it does alone, instead of right after
    # the other models' code at every event, while a slow spell of a shared machine still falls on every
    # model, not on one model's pass. With the clock change in ``_learning`` it took the MovieLens learner
    # from 27.6 to 23.8 us an event in ``--baselines`` runs (BENCHMARKS.md, sixteenth session).
    pairs = list(zip(models, results, strict=True))
    turns = (pairs, pairs[::-1])
    positions, cold = array("l"), array("b")
    sessions = Sessions(config.session_gap_s)
    seen: set[str] = set()
    clock = time.perf_counter
    for number, (begin, end) in enumerate(_blocks(total, config.refresh_every)):
        block: list[tuple[Step, bool]] = []  # each event's step, and whether it is a prediction
        for position in range(begin, end):
            event = stream[position]
            key = sessions.key(event)
            prefix_items = sessions.items(key)
            target = event.item_id
            repeat = bool(prefix_items) and prefix_items[-1] == target
            prefix = tuple(prefix_items)
            asked = bool(prefix) and not repeat
            if asked:
                positions.append(position)
                cold.append(target not in seen)
            step = Step(position, key, event.user_id, prefix, target, event.kind, event.ts, repeat)
            block.append((step, asked))
            if not repeat:
                prefix_items.append(target)
            seen.add(target)
        # The stream's end publishes too: no prediction follows, but a model that defers its work to
        # publish (baselines._Buffered, the SGNS learner) has then done, and been timed on, every event.
        publish = end % config.refresh_every == 0 or end == total
        for model, result in turns[number % 2]:
            for step, asked in block:
                if asked:
                    started = clock()
                    ranked = model.recommend(step.prefix, k)[:k]
                    covered = model.serves(step.item_id)
                    result.wall_s += clock() - started
                    result.ranks.append(ranked.index(step.item_id) + 1 if step.item_id in ranked else 0)
                    result.covered.append(covered)
                _learning(result, model.learn, step)
            if publish:
                _learning(result, model.publish)
        if on_progress is not None:
            on_progress(end, total)
    return EvalResult(total, positions, cold, results, k)
