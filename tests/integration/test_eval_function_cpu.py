"""scripts/eval_function_cpu.py on a slice of REES46: it wraps functions by name in a child eval run."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "rees46-multicat-oct2019-head" / "canonical"
SCRIPT = REPO / "scripts" / "eval_function_cpu.py"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared data sets are not at {DATA}")


def _run(*functions: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), str(DATA), *functions, "--runs", "1", "--limit", "3000"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_it_reports_the_calls_and_cpu_of_a_function_the_learner_calls() -> None:
    done = _run("recsim_stream.sampler:NegativeSampler.observe")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    # 3,000 events: a batch every ~8,192 pairs plus one per publish (every 1,000 events).
    assert line.startswith("recsim_stream.sampler:NegativeSampler.observe: ")
    calls = int(line.split(" calls")[0].rsplit(" ", 1)[1])
    assert calls >= 3
    assert "(3000 events)" in line
    timer = float(line.split("the timer itself: at least ")[1].split(" us a call")[0])
    assert timer > 0  # the wrapper's own cost, timed on a wrapped no-op in the child


def test_a_function_never_called_fails_rather_than_reporting_zero() -> None:
    done = _run("recsim_stream.sampler:NegativeSampler.restore")
    assert done.returncode != 0
    assert "was never called" in done.stderr
