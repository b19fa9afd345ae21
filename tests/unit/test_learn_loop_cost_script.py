import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "learn_loop_cost.py"
DATA = ROOT.parent / "shared" / "data" / "movielens-100k" / "canonical"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared data sets are not at {DATA}")
def test_reports_the_per_event_cost_in_a_loop_and_between_queries():
    command = [sys.executable, str(SCRIPT), str(DATA), "--runs", "1", "--limit", "2000"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    assert re.fullmatch(
        r"2,000 events, 1 runs each\n"
        r"  loop     median [\d.]+ us/event  \(runs [\d.]+\)\n"
        r"  queries  median [\d.]+ us/event  \(runs [\d.]+\)\n",
        out,
    ), out
