"""scripts/learning_core_costs.py on a slice of REES46: its variants take parts out of the learner by
replacing functions (``trainer.sgns_step``, ``SgnsTrainer.step``), so a change to those must not leave
the tool measuring the wrong thing or failing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "rees46-multicat-oct2019-head" / "canonical"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared data sets are not at {DATA}")


def test_the_parts_add_up_to_the_learner_and_training_costs_something(tmp_path: Path) -> None:
    plot = tmp_path / "costs.png"
    command = [sys.executable, str(REPO / "scripts" / "learning_core_costs.py"), str(DATA),
               "--runs", "1", "--limit", "1500", "--json", "--plot", str(plot)]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    report = json.loads(out.strip().splitlines()[-1])
    cpu = report["cpu_us_per_event"]
    assert set(cpu) == {"full", "zero-math", "no-content", "no-training-content", "gensim"}
    # Each part taken out removes real work: training (sampler, pulls, maths, pushes of every pair)
    # and the tower (encoding the 6,493 listed items alone is most of REES46's learner).
    assert cpu["no-training-content"] < cpu["no-content"] < cpu["full"]
    assert report["pairs_per_event"] > 0
    assert report["budget_10x_us_per_event"] > 0
    # gensim's loop was timed on the slice's sessions, and the learner priced with it has every part.
    assert report["gensim_cpu_us_per_pair"] > 0
    assert set(report["with_gensim_sgns"]) == {
        "windows, pairs, interning, publishing",
        "SGNS at gensim's CPU per pair",
        "content tower (cold start)",
    }
    assert all(value > 0 for value in report["with_gensim_sgns"].values())
    assert plot.stat().st_size > 0
