import msgpack
import pytest

from recsim_stream.config import ConfigError, SessionConfig
from recsim_stream.events import BadEvent, BadReason, Event, EventKind
from recsim_stream.sessions import ClosedSession, SessionWindows

CONFIG = SessionConfig(gap_s=100.0, allowed_lateness_s=10.0, max_events=50, max_duration_s=1000.0)


def click(user, item, ts, session_id=None, kind=EventKind.CLICK):
    return Event(user, str(item), kind, float(ts), session_id)


def add(windows, user, item, ts, session_id=None, kind=EventKind.CLICK, partition=0):
    return windows.add(click(user, item, ts, session_id, kind), partition, item)


def test_events_within_the_gap_share_a_session():
    windows = SessionWindows(CONFIG)
    first = add(windows, "u", 1, 0).session.key
    assert add(windows, "u", 2, 100).session.key == first


def test_a_gap_above_gap_s_starts_a_new_session():
    windows = SessionWindows(CONFIG)
    first = add(windows, "u", 1, 0).session.key
    assert add(windows, "u", 2, 100.5).session.key != first


def test_session_id_groups_events_regardless_of_gap():
    windows = SessionWindows(CONFIG)
    first = add(windows, "u", 1, 0, session_id="s1").session.key
    assert add(windows, "u", 2, 500, session_id="s1").session.key == first


def test_interleaved_session_ids_of_one_user_stay_apart():
    windows = SessionWindows(CONFIG)
    a = add(windows, "u", 1, 0, session_id="a")
    b = add(windows, "u", 2, 1, session_id="b")
    add(windows, "u", 3, 2, session_id="a")
    assert a.session.items == [1, 3]
    assert b.session.items == [2]


def test_users_have_separate_sessions():
    windows = SessionWindows(CONFIG)
    assert add(windows, "u", 1, 0).session.key != add(windows, "v", 1, 0).session.key


def test_an_event_older_than_the_watermark_is_late():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 100)
    late = add(windows, "v", 2, 89.5, partition=0)
    assert isinstance(late, BadEvent)
    assert late.reason == BadReason.LATE


def test_late_detail_names_partition_and_lateness():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 100, partition=3)
    late = add(windows, "u", 2, 80, partition=3)
    assert late.detail == (
        "event ts 80.0 of user 'u' is 20.000 s behind the newest event of partition 3; "
        "allowed lateness is 10.0 s"
    )


def test_an_event_exactly_at_the_watermark_is_accepted():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 100)
    assert not isinstance(add(windows, "u", 2, 90), BadEvent)


def test_out_of_order_event_within_lateness_joins_its_session_and_moves_its_start():
    windows = SessionWindows(CONFIG)
    first = add(windows, "u", 1, 100)
    second = add(windows, "u", 2, 95)
    assert second.session.key == first.session.key
    assert second.session.start == 95.0
    assert second.session.end == 100.0


def test_watermarks_are_per_partition():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 1000, partition=0)
    assert not isinstance(add(windows, "v", 1, 10, partition=1), BadEvent)
    assert windows.watermark(0) == 990.0
    assert windows.watermark(1) == 0.0
    assert windows.watermark(2) is None


def test_max_events_cuts_a_session():
    windows = SessionWindows(SessionConfig(gap_s=100.0, max_events=2))
    a = add(windows, "u", 1, 0).session.key
    b = add(windows, "u", 2, 1).session.key
    c = add(windows, "u", 3, 2).session.key
    assert a == b
    assert c != a


def test_max_duration_cuts_a_session():
    windows = SessionWindows(SessionConfig(gap_s=100.0, max_duration_s=150.0))
    a = add(windows, "u", 1, 0).session.key
    add(windows, "u", 2, 90)
    c = add(windows, "u", 3, 160).session.key
    assert c != a


def test_a_sealed_session_takes_no_more_events():
    windows = SessionWindows(SessionConfig(gap_s=100.0, allowed_lateness_s=10.0, max_events=2))
    a = add(windows, "u", 1, 10).session.key
    add(windows, "u", 2, 11)
    c = add(windows, "u", 3, 12).session.key
    assert add(windows, "u", 4, 10.5).session.key == c
    assert c != a


def test_a_late_event_between_two_sessions_joins_the_nearer_one():
    windows = SessionWindows(SessionConfig(gap_s=10.0, allowed_lateness_s=100.0))
    add(windows, "u", 1, 0)
    later = add(windows, "u", 2, 15).session.key
    assert add(windows, "u", 3, 9).session.key == later


def test_repeat_is_the_same_item_as_the_previous_event():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 0)
    repeat = add(windows, "u", 1, 1)
    assert repeat.repeat is True
    assert repeat.session.items == [1]
    assert repeat.session.n_events == 2


def test_an_item_seen_earlier_but_not_just_before_is_no_repeat():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 0)
    add(windows, "u", 2, 1)
    again = add(windows, "u", 1, 2)
    assert again.repeat is False
    assert again.first_seen is False
    assert again.session.items == [1, 2, 1]


def test_a_repeat_purchase_marks_the_session_converted():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 7, 0)
    bought = add(windows, "u", 7, 1, kind=EventKind.PURCHASE)
    assert bought.repeat is True
    assert bought.first_purchase is True
    assert bought.session.converted is True
    assert bought.session.purchased == [7]


def test_context_is_the_previous_window_items():
    windows = SessionWindows(CONFIG)
    for ts, item in enumerate([1, 2, 3, 4]):
        arrival = add(windows, "u", item, ts)
    assert arrival.context(2) == [2, 3]
    assert arrival.prefix() == [1, 2, 3]


def test_context_of_a_repeat_ends_with_the_repeated_item():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 0)
    add(windows, "u", 2, 1)
    assert add(windows, "u", 2, 2).context(5) == [1, 2]


def test_advance_closes_sessions_behind_watermark_minus_gap():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 0)
    add(windows, "u", 2, 5, kind=EventKind.PURCHASE)
    add(windows, "v", 3, 110)
    assert windows.advance(0) == []
    add(windows, "v", 3, 116)
    assert windows.advance(0) == [
        ClosedSession(
            key=(0, 0),
            user_id="u",
            session_id=None,
            n_events=2,
            n_items=2,
            converted=True,
            start=0.0,
            end=5.0,
        )
    ]
    assert windows.open_sessions() == 1


def test_close_ends_every_session_but_keeps_the_watermark():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 100)
    assert len(windows.close()) == 1
    assert windows.open_sessions() == 0
    assert isinstance(add(windows, "u", 1, 50), BadEvent)


def test_state_survives_msgpack_and_restore():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 0, session_id="s")
    add(windows, "u", 2, 1, session_id="s", kind=EventKind.CART)
    add(windows, "v", 3, 2, partition=1)
    state = windows.state()
    restored = SessionWindows.restore(CONFIG, msgpack.unpackb(msgpack.packb(state)))
    assert restored.state() == state


def test_restored_windows_continue_the_same_session():
    windows = SessionWindows(CONFIG)
    key = add(windows, "u", 1, 0).session.key
    restored = SessionWindows.restore(CONFIG, msgpack.unpackb(msgpack.packb(windows.state())))
    arrival = add(restored, "u", 2, 1)
    assert arrival.session.key == key
    assert arrival.session.items == [1, 2]


def test_revoke_hands_partitions_to_another_consumer():
    first = SessionWindows(CONFIG)
    key = add(first, "u", 1, 0, partition=2).session.key
    add(first, "v", 1, 0, partition=3)
    handed = first.revoke([2])
    second = SessionWindows(CONFIG)
    second.adopt(handed)
    assert first.open_sessions() == 1
    assert first.watermark(2) is None
    assert add(second, "u", 2, 1, partition=2).session.key == key


def test_adopting_an_owned_partition_is_refused():
    windows = SessionWindows(CONFIG)
    add(windows, "u", 1, 0)
    with pytest.raises(ValueError, match="partition 0 is already owned"):
        windows.adopt(windows.state())


def test_adopting_an_unknown_state_version_is_refused():
    with pytest.raises(ValueError, match="expected version 1, got 99"):
        SessionWindows.restore(CONFIG, {"version": 99, "partitions": []})


def test_config_rejects_a_non_positive_max_duration():
    with pytest.raises(ConfigError, match="sessions.max_duration_s"):
        SessionConfig(max_duration_s=0.0)
