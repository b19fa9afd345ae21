"""The speed lines under eval's table: the learner's learn events/s over each baseline's."""

from recsim_stream.eval_report import format_speedups, learn_speedups


def test_speedups_are_the_learners_rate_over_each_baselines_and_none_without_a_rate() -> None:
    baselines = {"GENSIM-RETRAIN": {"learn_events_per_s": 10_000.0}, "POP": {"learn_events_per_s": None}}
    assert learn_speedups({"learn_events_per_s": 35_000.0}, baselines) == {"GENSIM-RETRAIN": 3.5, "POP": None}
    assert learn_speedups({"learn_events_per_s": None}, baselines) == {"GENSIM-RETRAIN": None, "POP": None}


def test_one_line_per_learner_with_speedups_the_one_without_the_tower_named_so() -> None:
    report = {
        "model": "RECSIM-SGNS",
        "learn_speedup": {"GENSIM-RETRAIN": 3.456, "POP": None},
        "no_content": {"learn_speedup": {"GENSIM-RETRAIN": 5.0, "POP": 0.01}},
    }
    assert format_speedups(report) == [
        "learn events/s of RECSIM-SGNS over each baseline's: GENSIM-RETRAIN 3.46x, POP -",
        "learn events/s of RECSIM-SGNS without the content tower over each baseline's: "
        "GENSIM-RETRAIN 5.00x, POP 0.01x",
    ]
    assert format_speedups({"model": "RECSIM-SGNS"}) == []
