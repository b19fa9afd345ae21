import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plan_cost.py"


def test_reports_the_median_and_each_call_of_a_full_plan():
    command = [sys.executable, str(SCRIPT), "--items", "3000", "--learned", "0.5", "--repeats", "2"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    assert re.fullmatch(r"3,000 items \(50% learned\): full plan [\d.]+ s \(calls [\d.]+, [\d.]+\)\n", out), (
        out
    )
