"""Crash recovery on the real broker and Ray: the updater killed with SIGKILL (with its local Ray) and a
shard actor killed, several times at random moments mid-stream. Every record must be accounted for
exactly once in the final state (trained or dead-lettered), and the final embeddings must agree with
an uninterrupted run's about as well as two uninterrupted runs agree with each other.

``recsim-stream drill kill-updater|kill-shard`` runs the same drills at larger sizes (RELIABILITY.md).
"""

from __future__ import annotations

import pytest

from recsim_stream.drills import DrillOptions, run

pytestmark = pytest.mark.integration

# The faulted run's neighbour overlap with an uninterrupted run, as a share of the overlap between two
# uninterrupted runs (which differ too: poll boundaries, hence batches and negatives, vary).
OVERLAP_SHARE = 0.75


def _drill(kafka_bootstrap: str, fault: str, faults: int) -> dict:
    options = DrillOptions(
        fault=fault,
        faults=faults,
        events=15_000,
        rate=600.0,
        items=500,
        bad_records=20,
        seed=11,
        checkpoint_interval_s=1.0,
        min_delay_s=1.0,
        max_delay_s=3.0,
        bootstrap=kafka_bootstrap,
    )
    return run(options, print)


def _assert_accounted(result: dict) -> None:
    assert result["records_in_topic"] == 15_000 + 20
    assert result["records_accounted"] == result["records_in_topic"]
    assert result["events_lost"] == 0
    assert result["events_applied_twice"] == 0
    assert result["dead_lettered"] == 20
    assert result["dead_letter_sources"] == 20  # every bad record dead-lettered; repeats allowed
    assert result["uninterrupted_records"] == result["records_in_topic"]
    assert result["items_compared"] >= 100
    assert result["neighbour_overlap"] >= OVERLAP_SHARE * result["neighbour_overlap_uninterrupted_runs"]


@pytest.mark.timeout(600)
def test_killing_the_updater_three_times_loses_and_repeats_nothing(kafka_bootstrap):
    result = _drill(kafka_bootstrap, "kill-updater", faults=3)
    _assert_accounted(result)
    assert len(result["recover_s"]) == 3


@pytest.mark.timeout(600)
def test_killing_a_shard_actor_twice_recovers_in_process_and_loses_nothing(kafka_bootstrap):
    result = _drill(kafka_bootstrap, "kill-shard", faults=2)
    _assert_accounted(result)
    assert len(result["recover_s"]) == 2
