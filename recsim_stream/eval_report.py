"""Reports of a prequential run: the JSON object, a text table and a PNG of HR@k over the stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsim_stream.evaluate import EvalResult


def to_json(
    result: EvalResult,
    main: str | None,
    baselines: list[str],
    total_wall_s: float,
    without_content: str | None = None,
) -> dict:
    """Top level: the main model's summary (values None when there is none); baselines by name; with
    ``without_content`` (the learner run beside it without the content tower), that run's summary as
    ``no_content`` and ``content_cost``: the fraction of the learner's learn events/s the tower takes,
    from CPU time (wall time on a shared machine moves with the other processes' load). With baselines,
    the learner (and ``no_content``) also gets ``learn_speedup``: ``learn_speedups`` by baseline."""
    by_name = {m.name: m for m in result.models}
    top = result.summary(by_name[main] if main is not None else None)
    top["model"] = main
    top["total_wall_s"] = total_wall_s
    if without_content is not None:
        off = result.summary(by_name[without_content])
        top["no_content"] = off
        top["content_cost"] = 1.0 - off["learn_cpu_us_per_event"] / top["learn_cpu_us_per_event"]
    if baselines:
        top["baselines"] = {name: result.summary(by_name[name]) for name in baselines}
        for learner in (top, top.get("no_content")):
            if learner is not None and main is not None:
                learner["learn_speedup"] = learn_speedups(learner, top["baselines"])
    return top


def learn_speedups(learner: dict, baselines: dict[str, dict]) -> dict[str, float | None]:
    """The learner's learn events/s over each baseline's, by name: the learner issue's speed target is
    10x GENSIM-RETRAIN's, measured in the same command (None where a rate is missing)."""
    mine = learner["learn_events_per_s"]
    return {
        name: mine / theirs if mine and (theirs := baseline["learn_events_per_s"]) else None
        for name, baseline in baselines.items()
    }


def format_speedups(report: dict) -> list[str]:
    """One line per learner of ``to_json``'s report that has speed-ups: its learn events/s over each
    baseline's."""
    lines = []
    for learner in (report, report.get("no_content")):
        if learner is None or "learn_speedup" not in learner:
            continue
        name = report["model"] if learner is report else f"{report['model']} without the content tower"
        ratios = ", ".join(
            f"{baseline} {'-' if ratio is None else f'{ratio:.2f}x'}"
            for baseline, ratio in learner["learn_speedup"].items()
        )
        lines.append(f"learn events/s of {name} over each baseline's: {ratios}")
    return lines


_CELL = 20  # the widest column name (learn_events_per_s) and two spaces


def format_table(result: EvalResult) -> str:
    """One row per model, aligned, for people reading a terminal."""
    k = result.k
    columns = (
        f"hr@{k}",
        f"mrr@{k}",
        f"hr@{k}_second_half",
        f"cold_hr@{k}",
        "wall_s",
        "events_per_s",
        "learn_events_per_s",
    )
    name_width = max(16, *(len(m.name) + 2 for m in result.models))
    header = f"{'model':<{name_width}}" + "".join(f"{c:>{_CELL}}" for c in columns)
    lines = [
        f"{result.events} events, {len(result.positions)} predictions "
        f"({sum(result.cold)} with a cold target), top-{k}",
        header,
    ]
    for model in result.models:
        summary = result.summary(model)
        cells = []
        for column in columns:
            value = summary[column]
            if value is None:
                cells.append(f"{'-':>{_CELL}}")
            elif column in ("events_per_s", "learn_events_per_s"):
                cells.append(f"{value:>{_CELL},.0f}")
            elif column == "wall_s":
                cells.append(f"{value:>{_CELL}.2f}")
            else:
                cells.append(f"{value:>{_CELL}.4f}")
        lines.append(f"{model.name:<{name_width}}" + "".join(cells))
    return "\n".join(lines)


def rolling_hit_rate(ranks: np.ndarray, window: int) -> np.ndarray:
    """Mean of hits over the last ``window`` predictions (fewer at the start)."""
    hits = (ranks > 0).astype(np.float64)
    sums = np.cumsum(hits)
    lagged = np.concatenate([np.zeros(window), sums[:-window]]) if len(sums) > window else np.zeros(len(sums))
    counts = np.minimum(np.arange(1, len(hits) + 1), window)
    return (sums - lagged[: len(sums)]) / counts


def write_plot(result: EvalResult, plot_path: str | Path, window: int | None = None) -> Path:
    """PNG of rolling HR@k against stream position, one line per model."""
    import matplotlib  # noqa: PLC0415 - imported only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(result.positions)
    window = window or max(50, n // 20)
    positions = np.asarray(result.positions, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(9, 5))
    for model in result.models:
        ranks = np.asarray(model.ranks, dtype=np.int64)
        ax.plot(positions, rolling_hit_rate(ranks, window), label=model.name, linewidth=1.2)
    ax.set_xlabel("stream position (events)")
    ax.set_ylabel(f"HR@{result.k}, rolling over {window} predictions")
    ax.set_title(f"Prequential HR@{result.k} ({result.events} events, {n} predictions)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(plot_path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
