import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "assemble_cost.py"


def test_reports_the_first_and_later_calls_and_at_least_the_served_tables_as_allocated():
    command = [sys.executable, str(SCRIPT), "--items", "20000", "--learned", "0.5", "--repeats", "2"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    found = re.fullmatch(
        r"20,000 items \(50% learned\): assemble [\d.]+ s on fresh memory, [\d.]+ s after that; "
        r"peak allocated ([\d,]+) MiB\n",
        out,
    )
    assert found, out
    served_mib = 20_000 * (2 * 64 + 64 + 64) * 4 / 2**20  # content, input and output vectors (float32)
    assert int(found.group(1).replace(",", "")) >= served_mib
