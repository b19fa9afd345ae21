import json
from pathlib import Path

import pytest

from recsim_stream.cli import main

DATA = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "rees46-multicat-oct2019-head"
    / "canonical"
)
KEYS = {
    "events",
    "predictions",
    "hr@20",
    "mrr@20",
    "hr@20_second_half",
    "cold_predictions",
    "cold_hr@20",
    "cold_coverage",
    "wall_s",
    "events_per_s",
    "learn_events_per_s",
}

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared data sets are not at {DATA}")


def test_eval_json_has_the_protocol_keys_for_the_model_and_each_baseline(capsys, tmp_path):
    plot = tmp_path / "hr.png"
    code = main(
        [
            "eval",
            str(DATA / "events.csv"),
            "--items",
            str(DATA / "items.csv"),
            "--limit",
            "3000",
            "--baselines",
            "--json",
            "--plot",
            str(plot),
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert code == 0
    assert KEYS <= set(report)
    assert report["events"] == 3000
    assert set(report["baselines"]) == {"POP", "RECENT", "ITEMKNN", "RECENT-KNN", "GENSIM-RETRAIN"}
    assert all(KEYS <= set(b) for b in report["baselines"].values())
    assert plot.stat().st_size > 0
    # The learner issue's speed target, in the same command: learn events/s over GENSIM-RETRAIN's.
    gensim = report["baselines"]["GENSIM-RETRAIN"]["learn_events_per_s"]
    speedup = report["learn_speedup"]["GENSIM-RETRAIN"]
    assert speedup == pytest.approx(report["learn_events_per_s"] / gensim)
    assert set(report["learn_speedup"]) == set(report["baselines"])
    line = next(x for x in out if x.startswith("learn events/s of RECSIM-SGNS over each baseline's:"))
    assert f"GENSIM-RETRAIN {speedup:.2f}x" in line


def test_eval_refuses_a_file_that_is_not_canonical_csv(capsys, tmp_path):
    bad = tmp_path / "events.csv"
    bad.write_text("time,who,what\n1,u,i\n")
    assert main(["eval", str(bad)]) == 2
    assert "expected header" in capsys.readouterr().err


def test_eval_content_cost_runs_the_learner_without_the_tower_beside_it(capsys):
    args = ["eval", str(DATA / "events.csv"), "--items", str(DATA / "items.csv"), "--limit", "2000"]
    code = main([*args, "--json", "--content-cost"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    off = report["no_content"]
    assert code == 0
    assert (report["model"], off["cold_coverage"], KEYS <= set(off)) == ("RECSIM-SGNS", 0.0, True)
    expected = 1.0 - off["learn_cpu_us_per_event"] / report["learn_cpu_us_per_event"]
    assert report["content_cost"] == pytest.approx(expected)
    assert 0 < report["content_training_share"] < 1
    assert "learn_speedup" not in report  # no baselines to compare with


def test_eval_content_cost_needs_the_tower_and_items(capsys):
    assert main(["eval", str(DATA / "events.csv"), "--content-cost"]) == 2
    assert "--content-cost needs --items" in capsys.readouterr().err
