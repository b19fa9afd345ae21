from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import PairConfig, SessionConfig
from recsim_stream.events import BadEvent, Event, EventKind
from recsim_stream.pairs import PairBuffer
from recsim_stream.sessions import SessionWindows

# Distinct weights, so each pair's weight tells which rule made it.
PAIRS = PairConfig(
    window=3,
    click_weight=1.0,
    cart_weight=1.5,
    purchase_weight=2.0,
    purchase_context_weight=0.25,
    cart_context_weight=0.5,
)
KIND_WEIGHT = {EventKind.CLICK: 1.0, EventKind.CART: 1.5, EventKind.PURCHASE: 2.0}
SESSIONS = SessionConfig(gap_s=50.0, allowed_lateness_s=10.0, max_events=8, max_duration_s=500.0)

# (user, item, kind, clock step, how far behind the clock, session id)
_step = st.tuples(
    st.integers(0, 2),
    st.integers(0, 6),
    st.sampled_from([EventKind.CLICK] * 4 + [EventKind.CART, EventKind.PURCHASE]),
    st.sampled_from([0.0, 1.0, 5.0, 30.0, 80.0]),
    st.sampled_from([0.0, 0.0, 5.0, 15.0]),
    st.sampled_from([None, None, "a"]),
)


class Reference:
    """The session facts the formula needs, rebuilt from events and session keys alone."""

    def __init__(self):
        self.sequence = defaultdict(list)  # repeat-collapsed items per session key
        self.previous = {}  # item of the previous event per session key
        self.seen = defaultdict(list)
        self.purchased = defaultdict(list)
        self.carted = defaultdict(list)

    def expected(self, key, item, kind):
        """(pair count by the docstring formula, expected window contexts); then records the event."""
        repeat = self.previous.get(key) == item
        window = [] if repeat else [c for c in self.sequence[key][-PAIRS.window :] if c != item]
        purchased = self.purchased[key]
        first_seen = item not in self.seen[key]
        seen = self.seen[key] + ([item] if first_seen else [])
        count = len(window) + (len(purchased) if first_seen else 0)
        if kind is EventKind.PURCHASE and item not in purchased:
            count += len([s for s in seen if s != item and s not in purchased])
        if kind is EventKind.CART and item not in self.carted[key]:
            count += len([s for s in seen if s != item])
        self.previous[key] = item
        if not repeat:
            self.sequence[key].append(item)
        self.seen[key] = seen
        if kind is EventKind.PURCHASE and item not in purchased:
            purchased.append(item)
        if kind is EventKind.CART and item not in self.carted[key]:
            self.carted[key].append(item)
        return 2 * count, sorted(window)


def play(steps):
    """Per accepted event: (session key, item, kind, pairs as (center, context, weight) triples)."""
    windows = SessionWindows(SESSIONS)
    buffer = PairBuffer(PAIRS)
    clock = 0.0
    out = []
    for user, item, kind, step, behind, session_id in steps:
        clock += step
        arrival = windows.add(Event(f"u{user}", str(item), kind, clock - behind, session_id), user, item)
        if isinstance(arrival, BadEvent):
            continue
        returned = buffer.add(arrival)
        batch = buffer.take()
        pairs = list(
            zip(batch.centers.tolist(), batch.contexts.tolist(), batch.weights.tolist(), strict=True)
        )
        assert returned == len(pairs)
        out.append((arrival.session.key, item, kind, pairs))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=60))
def test_pair_count_matches_the_formula_and_window_pairs_match_the_sequence(steps):
    reference = Reference()
    for key, item, kind, pairs in play(steps):
        count, window = reference.expected(key, item, kind)
        assert len(pairs) == count
        assert sorted(c for center, c, w in pairs if center == item and w == KIND_WEIGHT[kind]) == window


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=60))
def test_no_item_is_paired_with_itself(steps):
    for _, _, _, pairs in play(steps):
        assert all(center != context for center, context, _ in pairs)


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=60))
def test_every_pair_comes_in_both_directions(steps):
    for _, _, _, pairs in play(steps):
        assert Counter(pairs) == Counter((x, c, w) for c, x, w in pairs)


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=60))
def test_each_session_item_meets_each_purchased_item_exactly_once(steps):
    context_pairs = defaultdict(Counter)
    seen, purchased = defaultdict(set), defaultdict(set)
    for key, item, kind, pairs in play(steps):
        seen[key].add(item)
        if kind is EventKind.PURCHASE:
            purchased[key].add(item)
        context_pairs[key].update((c, x) for c, x, w in pairs if w == PAIRS.purchase_context_weight)
    for key in seen:
        expected = Counter(
            pair for p in purchased[key] for s in seen[key] if s != p for pair in ((p, s), (s, p))
        )
        # A pair of two purchased items is one couple, counted once per direction.
        assert context_pairs[key] == Counter(set(expected))
