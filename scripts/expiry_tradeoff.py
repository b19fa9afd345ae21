"""What ``learn.expire_after_s`` trades: HR@20 against the shards' live rows, on an eval stream.

    .venv/bin/python scripts/expiry_tradeoff.py ../shared/data/movielens-100k/canonical \
        --days 0 7 30 90 --plot reports/expiry_movielens.png

Runs ``recsim-stream eval DIR/events.csv --items DIR/items.csv --json`` once per window (0 = never
expire), each in a fresh process; eval is deterministic, so one run a window tells them apart. Prints
a line per window: HR@20, cold HR@20, HR@20 over the stream's second half, the shards' live rows at
the end and at their peak (a table's capacity follows the peak: freed rows are recycled, never
returned), and the rows expired. The plot draws the live rows over the stream, a line per window.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DAY_S = 86_400.0


def run_eval(stream: Path, expire_after_s: float, limit: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "recsim_stream.cli",
        "eval",
        str(stream / "events.csv"),
        "--items",
        str(stream / "items.csv"),
        "--json",
        "--learn-expire-after-s",
        str(expire_after_s),
        "--limit",
        str(limit),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(days: float, report: dict) -> dict:
    rows = [live for _, live in report["shard_rows_by_publish"]]
    return {
        "days": days,
        "hr@20": report["hr@20"],
        "cold_hr@20": report["cold_hr@20"],
        "hr@20_second_half": report["hr@20_second_half"],
        "rows_end": rows[-1] if rows else 0,
        "rows_peak": max(rows, default=0),
        "rows_expired": report["rows_expired"],
    }


def plot(reports: dict[float, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for days, report in reports.items():
        events, rows = zip(*report["shard_rows_by_publish"], strict=True)
        label = "never" if days == 0 else f"{days:g} days"
        ax.plot(events, rows, label=f"{label}: HR@20 {report['hr@20']:.4f}")
    ax.set_xlabel("events learned")
    ax.set_ylabel("live rows in the shards")
    ax.set_title(title)
    ax.legend(title="learn.expire_after_s")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", type=Path, help="a canonical folder (events.csv, items.csv)")
    parser.add_argument("--days", type=float, nargs="+", default=[0, 7, 30, 90], help="windows (0 = never)")
    parser.add_argument("--plot", type=Path, help="write the live rows over the stream to this PNG")
    parser.add_argument("--limit", type=int, default=0, help="the first N events only (0 = all)")
    args = parser.parse_args(argv)
    reports: dict[float, dict] = {}
    started = time.monotonic()
    for n, days in enumerate(args.days, start=1):
        reports[days] = run_eval(args.stream, days * DAY_S, args.limit)
        elapsed = time.monotonic() - started
        eta = elapsed / n * (len(args.days) - n)
        print(f"[{n}/{len(args.days)}] {days:g} days ({elapsed:.0f} s, ETA {eta:.0f} s)", file=sys.stderr)
    print("days  HR@20   cold HR@20  HR@20 2nd half  rows end  rows peak  rows expired")
    for days, report in reports.items():
        s = summary(days, report)
        print(
            f"{days:>4g}  {s['hr@20']:.4f}  {s['cold_hr@20']:.4f}      {s['hr@20_second_half']:.4f}"
            f"          {s['rows_end']:>8}  {s['rows_peak']:>9}  {s['rows_expired']:>12}"
        )
    if args.plot:
        plot(reports, args.plot, f"Live shard rows over {args.stream.parent.name}")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
