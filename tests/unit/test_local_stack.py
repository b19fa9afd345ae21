"""The environment ``recsim-stream up`` (``make run``) gives its processes."""

from pathlib import Path

from recsim_stream.config import load_config
from services.local_stack import stack_env


def test_the_demo_retires_items_unless_the_user_said_otherwise():
    env = stack_env({"PATH": "/bin"}, "127.0.0.1:9092", Path("/var/demo"))
    assert load_config(None, env).sim.retired_items_per_1k_events == 1.0  # the name the config reads
    assert (env["PATH"], env["KAFKA_PORT"], env["RECSIM_SNAPSHOT_DIR"]) == (
        "/bin",
        "9092",
        "/var/demo/snapshots",
    )
    kept = stack_env({"RECSIM_SIM_RETIRED_ITEMS_PER_1K_EVENTS": "0"}, "localhost:19092", Path("/d"))
    assert load_config(None, kept).sim.retired_items_per_1k_events == 0.0
    assert kept["KAFKA_PORT"] == "19092"
