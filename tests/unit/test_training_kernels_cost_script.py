import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "training_kernels_cost.py"


def test_times_every_hot_function_once_each():
    command = [sys.executable, str(SCRIPT), "--repeats", "1"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    lines = out.splitlines()
    assert len(lines) == 12, out
    assert all(re.search(r": [\d.]+ ms$", line) for line in lines), out
    assert [line.split()[0] for line in lines] == (
        ["sgns_step"] * 3
        + ["KeyIndex"] * 3
        + ["trainer._side"] * 2
        + ["NegativeSampler.observe", "NegativeSampler.sample_pool"]
        + ["ContentTower.train_step"] * 2
    )
