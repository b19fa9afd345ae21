import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "expiry_tradeoff.py"
DATA = ROOT.parent / "shared" / "data" / "movielens-100k" / "canonical"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared data sets are not at {DATA}")
def test_a_short_window_expires_rows_that_never_expiring_keeps(tmp_path):
    plot = tmp_path / "rows.png"
    command = [
        sys.executable,
        str(SCRIPT),
        str(DATA),
        "--days",
        "0",
        "1",
        "--limit",
        "3000",
        "--plot",
        str(plot),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    lines = out.splitlines()
    assert lines[0].startswith("days  HR@20") and lines[-1] == f"plot: {plot}", out
    never, one_day = (re.split(r"\s+", line.strip()) for line in lines[1:3])
    assert (never[0], never[-1], one_day[0]) == ("0", "0", "1"), out
    assert int(one_day[-1]) > 0 and int(one_day[4]) < int(never[4]), (
        out
    )  # rows expired, fewer live at the end
    assert plot.stat().st_size > 10_000
