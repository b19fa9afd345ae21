"""kafka-python's own log lines that recsim-stream filters, produced by kafka-python itself."""

from __future__ import annotations

import logging
import time

import pytest
from kafka.net.selector import NetworkSelector

from recsim_stream import kafka_io


def _run_a_step_of(seconds: float) -> None:
    async def busy() -> None:
        time.sleep(seconds)  # holds the I/O loop, as the updater's thread holding the GIL does

    selector = NetworkSelector()
    try:
        selector.run(busy)
    finally:
        selector.close()


def _slow_step_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "blocking the event loop" in r.getMessage()]


def test_a_short_slow_io_step_is_not_logged_and_a_long_one_is(caplog, monkeypatch):
    monkeypatch.setattr(kafka_io, "SLOW_STEP_REPORTED_S", 0.3)
    with caplog.at_level(logging.WARNING, logger="kafka.net.selector"):
        _run_a_step_of(0.15)  # over kafka-python's 0.1 s, under ours
        assert _slow_step_warnings(caplog) == []
        _run_a_step_of(0.35)
        assert len(_slow_step_warnings(caplog)) == 1


def test_short_slow_steps_are_logged_when_the_kafka_logger_is_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="kafka.net.selector"):
        _run_a_step_of(0.15)
    assert len(_slow_step_warnings(caplog)) == 1
