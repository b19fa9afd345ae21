from collections import Counter, defaultdict

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import PairConfig, SessionConfig
from recsim_stream.events import BadEvent, BadReason, Event, EventKind
from recsim_stream.pairs import PairBuffer
from recsim_stream.sessions import SessionWindows

GAP, LATENESS = 50.0, 10.0
UNCUT = SessionConfig(gap_s=GAP, allowed_lateness_s=LATENESS, max_events=10_000, max_duration_s=1e9)
CUT = SessionConfig(gap_s=GAP, allowed_lateness_s=LATENESS, max_events=3, max_duration_s=80.0)

# (user, item, kind, clock step, how far behind the clock, session id, advance after it)
_step = st.tuples(
    st.integers(0, 3),
    st.integers(0, 5),
    st.sampled_from([EventKind.CLICK] * 4 + [EventKind.CART, EventKind.PURCHASE]),
    st.sampled_from([0.0, 1.0, 5.0, 20.0, 45.0, 60.0, 200.0]),
    st.sampled_from([0.0, 0.0, 4.0, 9.0, 10.0, 15.0]),
    st.sampled_from([None, None, "a", "b"]),
    st.booleans(),
)


def stream(steps, session_ids=True):
    """(partition, event, advance) triples; a user's events always go to the same partition."""
    clock = 0.0
    out = []
    for user, item, kind, step, behind, session_id, advance in steps:
        clock += step
        sid = session_id if session_ids else None
        out.append((user % 2, Event(f"u{user}", str(item), kind, clock - behind, sid), advance))
    return out


def run(config, events, windows=None):
    """Feed events; returns per-event outcomes, closed-session summaries and the windows."""
    windows = windows or SessionWindows(config)
    outcomes, closed = [], []
    for partition, event, advance in events:
        arrival = windows.add(event, partition, int(event.item_id))
        outcomes.append(arrival if isinstance(arrival, BadEvent) else arrival.session.key)
        if advance:
            closed.extend(windows.advance(partition))
    return outcomes, closed, windows


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, max_size=60))
def test_every_accepted_event_lands_in_exactly_one_session(steps):
    outcomes, closed, windows = run(CUT, stream(steps))
    closed.extend(windows.close())
    accepted = Counter(o for o in outcomes if not isinstance(o, BadEvent))
    assert Counter(c.key for c in closed) == Counter(set(accepted))
    assert {c.key: c.n_events for c in closed} == dict(accepted)


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, max_size=60))
def test_gap_sessions_of_one_user_never_overlap_and_hold_no_gap(steps):
    events = stream(steps, session_ids=False)
    outcomes, closed, windows = run(UNCUT, events)
    closed.extend(windows.close())
    times = defaultdict(list)
    for (_, event, _), outcome in zip(events, outcomes, strict=True):
        if not isinstance(outcome, BadEvent):
            times[outcome].append(event.ts)
    spans = defaultdict(list)
    for c in closed:
        assert (c.start, c.end) == (min(times[c.key]), max(times[c.key]))
        spans[c.user_id].append((c.start, c.end))
        ordered = sorted(times[c.key])
        assert all(b - a <= GAP for a, b in zip(ordered, ordered[1:], strict=False))  # no hole > gap_s
    for user_spans in spans.values():
        user_spans.sort()
        for (_, end), (start, _) in zip(user_spans, user_spans[1:], strict=False):
            assert end < start


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, max_size=60))
def test_late_events_are_exactly_those_older_than_their_partitions_watermark(steps):
    events = stream(steps)
    outcomes, _, _ = run(CUT, events)
    newest: dict[int, float] = {}
    for (partition, event, _), outcome in zip(events, outcomes, strict=True):
        late = partition in newest and event.ts < newest[partition] - LATENESS
        assert isinstance(outcome, BadEvent) == late
        if late:
            assert outcome.reason == BadReason.LATE
        newest[partition] = max(newest.get(partition, event.ts), event.ts)


def _trace(windows, buffer, events):
    out = []
    for partition, event, advance in events:
        arrival = windows.add(event, partition, int(event.item_id))
        if isinstance(arrival, BadEvent):
            out.append(arrival)
            continue
        buffer.add(arrival)
        batch = buffer.take()
        pairs = list(
            zip(batch.centers.tolist(), batch.contexts.tolist(), batch.weights.tolist(), strict=True)
        )
        out.append((arrival.session.key, arrival.repeat, arrival.prefix(), pairs))
        if advance:
            out.append(windows.advance(partition))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, max_size=60), st.integers(0, 60))
def test_restoring_a_checkpoint_then_continuing_equals_continuing(steps, split):
    events = stream(steps)
    split = min(split, len(events))
    pairs_config = PairConfig(window=2)
    continued = SessionWindows(CUT)
    expected = _trace(continued, PairBuffer(pairs_config), events)

    first = SessionWindows(CUT)
    head = _trace(first, PairBuffer(pairs_config), events[:split])
    restored = SessionWindows.restore(CUT, msgpack.unpackb(msgpack.packb(first.state())))
    tail = _trace(restored, PairBuffer(pairs_config), events[split:])
    assert head + tail == expected
    assert restored.state() == continued.state()


@settings(max_examples=100, deadline=None)
@given(st.lists(_step, max_size=60), st.integers(0, 60))
def test_handing_a_partition_over_equals_keeping_it(steps, split):
    events = stream(steps)
    split = min(split, len(events))
    kept = SessionWindows(CUT)
    expected = _trace(kept, PairBuffer(PairConfig()), events)

    owner = SessionWindows(CUT)
    head = _trace(owner, PairBuffer(PairConfig()), events[:split])
    taker = SessionWindows(CUT)
    taker.adopt(msgpack.unpackb(msgpack.packb(owner.revoke([1]))))
    buffers = {0: PairBuffer(PairConfig()), 1: PairBuffer(PairConfig())}
    tail = [
        step
        for event in events[split:]
        for step in _trace(taker if event[0] == 1 else owner, buffers[event[0]], [event])
    ]
    assert head + tail == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, max_size=80), st.integers(0, 80))
def test_advance_closes_exactly_the_sessions_behind_the_cutoff(steps, split):
    """The deadline queues give what a scan of every open session gives, restored or not."""
    events = stream(steps)
    windows = SessionWindows(CUT)
    for i, (partition, event, advance) in enumerate(events):
        if i == split:
            windows = SessionWindows.restore(CUT, windows.state())
        windows.add(event, partition, int(event.item_id))
        if not advance:
            continue
        before = {s[0]: s[4] for p in windows.state()["partitions"] if p[0] == partition for s in p[3]}
        cutoff = windows.watermark(partition) - GAP
        closed = windows.advance(partition)
        assert [c.key[1] for c in closed] == sorted(k for k, end in before.items() if end < cutoff)
        rows = [s for p in windows.state()["partitions"] for s in p[3]]
        assert windows.open_sessions() == len(rows)
        assert all(s[4] >= cutoff for p in windows.state()["partitions"] if p[0] == partition for s in p[3])
