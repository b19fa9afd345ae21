import numpy as np
import pytest

from recsim_stream.config import ConfigError, PairConfig, SessionConfig
from recsim_stream.events import Event, EventKind
from recsim_stream.pairs import PairBuffer
from recsim_stream.sessions import SessionWindows

CLICK, CART, PURCHASE = EventKind.CLICK, EventKind.CART, EventKind.PURCHASE
CONFIG = PairConfig(
    window=2,
    click_weight=1.0,
    cart_weight=1.5,
    purchase_weight=2.0,
    purchase_context_weight=0.25,
    cart_context_weight=0.5,
)


def run(steps, config=CONFIG):
    """Feed (item, kind) steps of one session; returns the pairs of the last step as triples."""
    windows = SessionWindows(SessionConfig())
    buffer = PairBuffer(config)
    for ts, (item, kind) in enumerate(steps):
        buffer.take()
        buffer.add(windows.add(Event("u", str(item), kind, float(ts)), 0, item))
    batch = buffer.take()
    return sorted(zip(batch.centers.tolist(), batch.contexts.tolist(), batch.weights.tolist(), strict=True))


def test_first_event_of_a_session_makes_no_pairs():
    assert run([(1, CLICK)]) == []


def test_a_click_pairs_with_the_previous_item_both_ways():
    assert run([(1, CLICK), (2, CLICK)]) == [(1, 2, 1.0), (2, 1, 1.0)]


def test_the_window_limits_the_context():
    assert run([(1, CLICK), (2, CLICK), (3, CLICK), (4, CLICK)]) == [
        (2, 4, 1.0),
        (3, 4, 1.0),
        (4, 2, 1.0),
        (4, 3, 1.0),
    ]


def test_a_cart_adds_window_pairs_at_cart_weight_and_context_pairs_at_cart_context_weight():
    assert run([(1, CLICK), (2, CART)]) == [(1, 2, 0.5), (1, 2, 1.5), (2, 1, 0.5), (2, 1, 1.5)]


def test_an_item_is_never_paired_with_itself():
    assert run([(1, CLICK), (2, CLICK), (1, CLICK)]) == [(1, 2, 1.0), (2, 1, 1.0)]


def test_a_consecutive_repeat_click_makes_no_pairs():
    assert run([(1, CLICK), (2, CLICK), (2, CLICK)]) == []


def test_a_purchase_pairs_with_every_item_of_its_session():
    pairs = run([(1, CLICK), (2, CLICK), (3, CLICK), (4, PURCHASE)])
    context = [p for p in pairs if p[2] == 0.25]
    assert context == [(1, 4, 0.25), (2, 4, 0.25), (3, 4, 0.25), (4, 1, 0.25), (4, 2, 0.25), (4, 3, 0.25)]


def test_a_purchase_of_the_item_just_viewed_still_adds_its_context():
    assert run([(1, CLICK), (2, CLICK), (2, PURCHASE)]) == [(1, 2, 0.25), (2, 1, 0.25)]


def test_a_second_purchase_of_the_same_item_adds_no_context():
    assert run([(1, CLICK), (2, PURCHASE), (2, PURCHASE)]) == []


def test_items_arriving_after_a_purchase_pair_with_the_purchased_item():
    pairs = run([(1, CLICK), (2, PURCHASE), (3, CLICK), (4, CLICK), (5, CLICK)])
    assert [p for p in pairs if p[2] == 0.25] == [(2, 5, 0.25), (5, 2, 0.25)]


def test_an_item_seen_before_the_purchase_is_not_paired_again():
    pairs = run([(1, CLICK), (2, PURCHASE), (1, CLICK)])
    assert pairs == [(1, 2, 1.0), (2, 1, 1.0)]


def test_a_cart_pairs_with_every_item_of_its_session():
    pairs = run([(1, CLICK), (2, CLICK), (3, CLICK), (3, CART)])
    assert pairs == [(1, 3, 0.5), (2, 3, 0.5), (3, 1, 0.5), (3, 2, 0.5)]


def test_add_returns_the_number_of_pairs_appended():
    windows = SessionWindows(SessionConfig())
    buffer = PairBuffer(CONFIG)
    buffer.add(windows.add(Event("u", "1", CLICK, 0.0), 0, 1))
    assert buffer.add(windows.add(Event("u", "2", PURCHASE, 1.0), 0, 2)) == 4
    assert len(buffer) == 4


def test_take_returns_typed_arrays_and_empties_the_buffer():
    windows = SessionWindows(SessionConfig())
    buffer = PairBuffer(CONFIG)
    buffer.add(windows.add(Event("u", "1", CLICK, 0.0), 0, 1))
    buffer.add(windows.add(Event("u", "2", CLICK, 1.0), 0, 2))
    batch = buffer.take()
    assert (batch.centers.dtype, batch.contexts.dtype, batch.weights.dtype) == (
        np.int64,
        np.int64,
        np.float32,
    )
    assert len(batch) == 2
    assert len(buffer) == 0
    assert len(buffer.take()) == 0


def test_config_rejects_a_negative_weight():
    with pytest.raises(ConfigError, match="pairs.cart_weight"):
        PairConfig(cart_weight=-1.0)
