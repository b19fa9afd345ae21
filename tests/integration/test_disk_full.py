"""A disk that fills up: a snapshot or checkpoint that cannot be written completely leaves the previous
one in place, with no partial folder, the failure is reported, and the query side keeps serving.

The disk is a real 1 MiB tmpfs mounted for the test (the machine's tests run as root); where mounting
is not allowed the test is skipped with the reason, and the unit tests' injected ENOSPC remain.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recsim_stream.checkpoint import CheckpointStore
from recsim_stream.checkpointer import Checkpointer
from recsim_stream.config import ApiConfig, CheckpointConfig, IndexConfig, SnapshotConfig
from recsim_stream.metrics import ApiMetrics, CheckpointMetrics, new_registry
from recsim_stream.query import IndexHolder, SnapshotWatcher
from recsim_stream.snapshot import SnapshotArrays, SnapshotStore

pytestmark = pytest.mark.integration

DIM = 8


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file taking all but ``leave_bytes`` of the disk."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler


def _arrays(rows: int, seed: int) -> SnapshotArrays:
    rng = np.random.default_rng(seed)
    return SnapshotArrays(
        ids=np.array([f"item-{i}" for i in range(rows)]),
        input_vectors=rng.normal(size=(rows, DIM)).astype(np.float32),
        output_vectors=rng.normal(size=(rows, DIM)).astype(np.float32),
        counts=np.full(rows, 5, np.int64),
        cold=np.zeros(rows, bool),
    )


def test_a_snapshot_that_does_not_fit_leaves_the_previous_one_served(small_disk):
    config = SnapshotConfig(dir=str(small_disk / "snapshots"))
    store = SnapshotStore(config)
    store.write(1, _arrays(50, 1), offsets={"events": {0: 50}}, newest_event_ts=1.0)
    holder = IndexHolder(ApiConfig(), ApiMetrics(new_registry()))
    watcher = SnapshotWatcher(store, holder, IndexConfig(), poll_s=0.01)
    assert watcher.poll_once()
    filler = _fill(small_disk, leave_bytes=16 * 1024)

    with pytest.raises(OSError) as raised:
        store.write(2, _arrays(2000, 2), offsets={"events": {0: 2000}}, newest_event_ts=2.0)
    assert raised.value.errno == errno.ENOSPC
    assert store.latest_version() == 1
    assert sorted(p.name for p in store.root.iterdir()) == ["LATEST", "v000000000001"]  # nothing partial
    assert not watcher.poll_once()
    assert holder.state.version == 1

    filler.unlink()
    store.write(2, _arrays(2000, 2), offsets={"events": {0: 2000}}, newest_event_ts=2.0)
    watcher.poll_once()  # a new base: loaded off the swap path
    assert watcher.wait_for_base(timeout=20)
    assert watcher.poll_once()
    assert holder.state.version == 2


def test_a_checkpoint_that_does_not_fit_is_reported_and_the_previous_one_stays_the_restart_point(small_disk):
    config = CheckpointConfig(dir=str(small_disk / "checkpoints"))
    store = CheckpointStore(config)
    registry = new_registry()
    checkpointer = Checkpointer(config, store, CheckpointMetrics(registry))
    checkpointer.take({("events", 0): 10}, {"table": np.zeros((10, DIM), np.float32)}, records=10)
    checkpointer.wait()
    filler = _fill(small_disk, leave_bytes=16 * 1024)

    checkpointer.take({("events", 0): 900}, {"table": np.zeros((5000, DIM), np.float32)}, records=900)
    checkpointer.wait()
    assert (checkpointer.written, checkpointer.failed) == (1, 1)
    assert registry.get_sample_value("recsim_checkpoint_failures_total") == 1.0
    assert isinstance(checkpointer.last_error, OSError) and checkpointer.last_error.errno == errno.ENOSPC
    assert [p.name for p in store.root.iterdir()] == ["c000000000001"]  # nothing partial
    assert store.newest().offsets == {("events", 0): 10}

    filler.unlink()
    checkpointer.take({("events", 0): 900}, {"table": np.zeros((5000, DIM), np.float32)}, records=901)
    checkpointer.wait()
    assert store.newest().offsets == {("events", 0): 900}
