import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lifetime_set_costs.py"


def test_times_each_set_at_each_size_and_ends_with_its_json():
    command = [
        sys.executable, str(SCRIPT), "--items", "4000", "--deleted", "0", "1000", "--delta-rows", "100",
        "--full-rows", "2000", "--listed", "500", "--learned", "100", "500", "--repeats", "2",
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    report = json.loads(out.splitlines()[-1])
    assert [r["deleted"] for r in report["deleted_runs"]] == [0, 1000]
    assert [r["learned"] for r in report["learned_runs"]] == [100, 500]
    for run in report["deleted_runs"]:
        assert run["delta_ms"] > 0 and run["full_ms"] > 0 and run["checkpoint_ms"] > 0
    assert all(run["fit_ms"] > 0 for run in report["learned_runs"])


def test_refuses_more_deleted_than_items():
    command = [sys.executable, str(SCRIPT), "--items", "10", "--deleted", "11", "--learned"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--deleted" in done.stderr
