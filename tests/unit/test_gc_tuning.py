import gc

import pytest

from recsim_stream.config import ConfigError, ProcessConfig
from recsim_stream.gc_tuning import settle_heap


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_start_up_objects_and_raises_the_threshold(restored_gc):
    kept = [[i] for i in range(1000)]  # containers alive at the end of start-up
    settle_heap(50_000)
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == 50_000


def test_zero_keeps_pythons_threshold(restored_gc):
    before = gc.get_threshold()
    settle_heap(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() > 0


def test_a_negative_threshold_is_refused():
    with pytest.raises(ConfigError, match="process.gc_threshold"):
        ProcessConfig(gc_threshold=-1)
