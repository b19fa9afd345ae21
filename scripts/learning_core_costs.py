"""Where the learning core's time goes on an eval stream, against the 10x GENSIM-RETRAIN budget.

The learner issue asks for ``learn_events_per_s`` >= 10x GENSIM-RETRAIN's. This runs the prequential
evaluation of RECSIM-SGNS (alone, as ``recsim-stream eval`` runs it) in variants with one part of the
core taken out, each in a fresh process, the variants taking turns run after run, and reports the
median CPU microseconds per event of each; the differences are the parts' costs:

    full                  the learner as eval runs it
    zero-math             the SGNS maths replaced by zero gradients (sampler, pulls, pushes stay)
    no-content            the content tower switched off (cold start, blending, re-encoding)
    no-training-content   that, and no SGNS training either (no sampler, pulls, maths or pushes):
                          what is left is windows, pairs, interning and publishing the tables
    gensim                GENSIM-RETRAIN alone, for the budget (its wall time, as the issue measures;
                          its CPU, counted over all its threads, is printed beside it)

It also times one epoch of gensim's own loop over the stream's sessions (sample=0, one worker, as
``bench learner`` does; pairs counted in expectation of its reduced windows) for its CPU per pair: our
pairs at that speed are what a compiled SGNS as fast as gensim's would cost, and the report shows the
learner with that SGNS in place of ours, against the budget.

SGNS training is told apart with the tower off: without learned rows the tower would not train
either, so "no training, tower on" would charge the tower's training to SGNS. The variants' quality
figures are meaningless (they do not learn); only their costs are read.

    .venv/bin/python scripts/learning_core_costs.py ../shared/data/movielens-100k/canonical --runs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("full", "zero-math", "no-content", "no-training-content", "gensim")
GENSIM_EPOCH = "gensim-epoch"  # not an eval variant: gensim's CPU per pair on the stream's sessions


def gensim_pair_cost(data: Path, limit: int) -> dict:
    """gensim's CPU microseconds per pair, one epoch over the stream's sessions as eval cuts them."""
    import itertools

    import numpy as np

    from recsim_stream.bench_learner import gensim_speed
    from recsim_stream.canonical_csv import read_events
    from recsim_stream.config import Config
    from recsim_stream.evaluate import Sessions, sort_stream

    rows = read_events(str(data / "events.csv"))
    sessions = Sessions(Config().eval.session_gap_s)
    items: dict[str, list[str]] = {}
    for event in sort_stream(itertools.islice(rows, limit) if limit else rows):
        session = items.setdefault(sessions.key(event), [])
        if not session or session[-1] != event.item_id:  # repeats add no pairs
            session.append(event.item_id)
    arrays = [np.array(s) for s in items.values() if len(s) >= 2]
    return {"variant": GENSIM_EPOCH, "cpu_us_per_pair": gensim_speed(arrays, seed=1).cpu_us_per_pair}


def run_variant(variant: str, data: Path, limit: int) -> dict:
    """One eval of one variant in this process; its costs as a dict."""
    import itertools

    import numpy as np

    from recsim_stream import sgns, trainer
    from recsim_stream.baselines import make_baselines
    from recsim_stream.canonical_csv import read_events, read_items
    from recsim_stream.config import Config
    from recsim_stream.evaluate import evaluate
    from recsim_stream.gc_tuning import settle_heap
    from recsim_stream.sgns_model import SgnsStreamModel
    from recsim_stream.threads import pin_blas_threads

    config = Config()
    pin_blas_threads(config.learn.blas_threads)
    settle_heap(config.process.gc_threshold)
    stand_ins = 0  # calls of a replaced function: none would mean the variant took nothing out

    def zero_gradients(in_rows, out_rows, centers, contexts, negatives, weights):
        nonlocal stand_ins
        stand_ins += 1
        w = weights.astype(in_rows.dtype)
        loss = sgns.SgnsLoss(w, w, w[:, None], w[:, None])
        return sgns.SgnsGradients(np.zeros_like(in_rows), np.zeros_like(out_rows), loss)

    def no_step(self, batch, **_):
        nonlocal stand_ins
        stand_ins += 1
        return trainer.StepResult(len(batch.centers), 0, ())

    if variant == "zero-math":
        trainer.sgns_step = zero_gradients  # the name the trainer calls
    if variant == "no-training-content":
        trainer.SgnsTrainer.step = no_step
    if variant in ("no-content", "no-training-content"):
        config = dataclasses.replace(config, content=dataclasses.replace(config.content, enabled=False))
    rows = read_events(str(data / "events.csv"))
    events = list(itertools.islice(rows, limit) if limit else rows)
    items = list(read_items(str(data / "items.csv")))
    if variant == "gensim":
        model = next(m for m in make_baselines(len(events)) if m.name == "GENSIM-RETRAIN")
    else:
        model = SgnsStreamModel(config)
    result = evaluate(events, [model], config.eval, items)
    if variant in ("zero-math", "no-training-content") and not stand_ins:
        raise SystemExit(f"{variant}: the replaced function was never called; the trainer changed")
    summary = result.summary(result.models[0])
    pairs = getattr(getattr(model, "learner", None), "pairs_trained", 0)
    return {
        "variant": variant,
        "cpu_us_per_event": summary["learn_cpu_us_per_event"],
        "wall_us_per_event": 1e6 / summary["learn_events_per_s"],
        "pairs_per_event": pairs / len(events),
        "events": len(events),
    }


def write_plot(
    path: str,
    stream: str,
    parts: dict[str, float],
    full_wall: float,
    budget: float,
    with_gensim_sgns: dict[str, float],
) -> None:
    """Two stacked bars of the parts (CPU us/event): the learner, and the learner with SGNS at gensim's
    CPU per pair; the 10x GENSIM-RETRAIN budget as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "windows, pairs, interning, publishing": "#55a868",
        "SGNS maths (sgns_step)": "#4c72b0",
        "SGNS sampler, plans, pulls, pushes": "#8fa9d6",
        "content tower (cold start)": "#dd8452",
        "SGNS at gensim's CPU per pair": "#8172b3",
    }
    fig, ax = plt.subplots(figsize=(9, 3.2))
    widest = 0.0
    for row, bar in enumerate((parts, with_gensim_sgns)):
        left = 0.0
        for name, value in bar.items():
            ax.barh([row], [value], left=left, color=colours[name], label=f"{name}: {value:.1f}")
            left += value
        widest = max(widest, left)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # the shared parts once
    ax.axvline(budget, color="black", linestyle="--")
    ax.set_yticks([0, 1], ["learner", "SGNS at gensim's\nCPU per pair"])
    ax.invert_yaxis()
    ax.set_xlabel("microseconds per event")
    ax.set_xlim(0, max(widest, full_wall, budget) * 1.05)
    ax.set_title(
        f"Learning core of recsim-stream eval on {stream}: {full_wall:.1f} us/event (wall); "
        f"dashed: 10x GENSIM-RETRAIN, {budget:.1f}"
    )
    ax.legend(unique.values(), unique.keys(), loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2,
              fontsize=8, frameon=False)  # fmt: skip
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a converted data set's canonical/ directory")
    parser.add_argument("--runs", type=int, default=3, help="runs of every variant (medians are reported)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N events")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--plot", metavar="PNG", help="write the parts as one bar against the 10x budget")
    parser.add_argument(
        "--variant", choices=(*VARIANTS, GENSIM_EPOCH), help=argparse.SUPPRESS
    )  # a child's run
    args = parser.parse_args()
    if args.variant:
        if args.variant == GENSIM_EPOCH:
            print(json.dumps(gensim_pair_cost(args.data, args.limit)))
        else:
            print(json.dumps(run_variant(args.variant, args.data, args.limit)))
        return
    runs: dict[str, list[dict]] = {v: [] for v in (*VARIANTS, GENSIM_EPOCH)}
    started = time.perf_counter()
    total = args.runs * (len(VARIANTS) + 1)
    for r in range(args.runs):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]  # each goes first in turn
        order += (GENSIM_EPOCH,)
        for variant in order:
            command = [
                sys.executable,
                __file__,
                str(args.data),
                "--variant",
                variant,
                "--limit",
                str(args.limit),
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
            done = sum(map(len, runs.values()))
            elapsed = time.perf_counter() - started
            last = runs[variant][-1]
            cost = (
                f"{last['cpu_us_per_pair']:.3f} us CPU/pair"
                if variant == GENSIM_EPOCH
                else f"{last['cpu_us_per_event']:.2f} us CPU/event"
            )
            print(
                f"[{done}/{total}] {variant}: {cost} ({elapsed:.0f} s, ETA {elapsed / done * (total - done):.0f} s)",
                file=sys.stderr,
            )
    cpu = {v: statistics.median(x["cpu_us_per_event"] for x in runs[v]) for v in VARIANTS}
    wall = {v: statistics.median(x["wall_us_per_event"] for x in runs[v]) for v in VARIANTS}
    training = cpu["no-content"] - cpu["no-training-content"]
    maths = cpu["full"] - cpu["zero-math"]
    parts = {  # the part without training or tower first: it alone shows how much budget is left
        "windows, pairs, interning, publishing": cpu["no-training-content"],
        "SGNS maths (sgns_step)": maths,
        "SGNS sampler, plans, pulls, pushes": training - maths,
        "content tower (cold start)": cpu["full"] - cpu["no-content"],
    }
    budget = wall["gensim"] / 10
    print(f"{'variant':24}{'CPU us/event':>14}{'wall us/event':>15}")
    for v in VARIANTS:
        print(f"{v:24}{cpu[v]:>14.2f}{wall[v]:>15.2f}")
    print(f"\n{'part of the full learner':44}{'CPU us/event':>14}")
    for name, value in parts.items():
        print(f"{name:44}{value:>14.2f}")
    pairs = statistics.median(x["pairs_per_event"] for x in runs["full"])
    print(
        f"\npairs/event {pairs:.2f}; GENSIM-RETRAIN {wall['gensim']:.1f} us/event wall, so 10x it is "
        f"{budget:.2f} us/event; the learner takes {wall['full']:.2f} ({wall['gensim'] / wall['full']:.2f}x GENSIM-RETRAIN)"
    )
    gensim_us_per_pair = statistics.median(x["cpu_us_per_pair"] for x in runs[GENSIM_EPOCH])
    with_gensim_sgns = {  # the learner with our SGNS training replaced by gensim's per-pair cost
        "windows, pairs, interning, publishing": parts["windows, pairs, interning, publishing"],
        "SGNS at gensim's CPU per pair": pairs * gensim_us_per_pair,
        "content tower (cold start)": parts["content tower (cold start)"],
    }
    print(
        f"gensim's loop on these sessions: {gensim_us_per_pair:.3f} us CPU a pair; our {pairs:.2f} pairs an "
        f"event at that speed: {pairs * gensim_us_per_pair:.2f} us; the learner with that SGNS: "
        f"{sum(with_gensim_sgns.values()):.2f} us/event CPU against the {budget:.2f} budget"
    )
    if args.plot:
        write_plot(args.plot, args.data.parent.name, parts, wall["full"], budget, with_gensim_sgns)
    if args.json:
        print(
            json.dumps(
                {
                    "cpu_us_per_event": cpu,
                    "wall_us_per_event": wall,
                    "parts": parts,
                    "pairs_per_event": pairs,
                    "budget_10x_us_per_event": budget,
                    "gensim_cpu_us_per_pair": gensim_us_per_pair,
                    "with_gensim_sgns": with_gensim_sgns,
                    "runs": runs,
                }
            )
        )


if __name__ == "__main__":
    main()
