"""EncodePacer: when the updater loop encodes newly listed items (a share of its time, by slices)."""

import pytest

from recsim_stream.config import ConfigError, ContentConfig
from recsim_stream.updater import EncodePacer


def test_a_pass_that_polled_no_event_may_encode_for_a_poll_timeout():
    assert EncodePacer(0.5, 0.05, 0.2, now=0.0).allowance(0.001, polled=0, waiting=True) == 0.2


def test_nothing_is_encoded_when_no_listed_item_waits():
    assert EncodePacer(0.5, 0.05, 0.2, now=0.0).allowance(10.0, polled=0, waiting=False) == 0.0


def test_while_events_flow_a_slice_waits_until_the_share_of_the_loop_time_earns_it():
    pacer = EncodePacer(0.5, 0.05, 0.2, now=0.0)
    assert [pacer.allowance(t, polled=100, waiting=True) for t in (0.04, 0.08, 0.1)] == [0.0, 0.0, 0.05]


def test_a_slice_that_overran_is_paid_back_before_the_next():
    pacer = EncodePacer(0.5, 0.05, 0.2, now=0.0)
    pacer.allowance(0.1, polled=100, waiting=True)
    pacer.spent(0.15)  # 0.1 s over the slice, started at 0.1 s: the next is earned at 0.4 s
    assert [pacer.allowance(t, polled=100, waiting=True) for t in (0.3, 0.39, 0.41)] == [0.0, 0.0, 0.05]


def test_credit_is_not_saved_up_while_nothing_waits():
    pacer = EncodePacer(0.5, 0.05, 0.2, now=0.0)
    pacer.allowance(100.0, polled=100, waiting=False)
    assert pacer.allowance(100.01, polled=100, waiting=True) == 0.0


def test_the_encode_share_must_be_a_fraction_of_the_loop():
    with pytest.raises(ConfigError, match="content.encode_share"):
        ContentConfig(encode_share=1.5)


def test_the_encode_slice_must_be_positive():
    with pytest.raises(ConfigError, match="content.encode_slice_s"):
        ContentConfig(encode_slice_s=0.0)
