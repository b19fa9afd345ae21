"""``recsim-stream eval``: prequential evaluation of a canonical events CSV.

Prints a table, optionally a PNG (``--plot``) and, with ``--json``, one JSON object on the last
line of stdout. The main model is the streaming SGNS learner (``sgns_model``), fed the same way the
updater feeds it; ``--baselines`` adds the references on the same stream and protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable

from recsim_stream.baselines import make_baselines
from recsim_stream.canonical_csv import CsvFormatError, read_events, read_items
from recsim_stream.config import Config, ConfigError, add_config_arguments, load_config
from recsim_stream.eval_report import format_speedups, format_table, to_json, write_plot
from recsim_stream.evaluate import StreamModel, evaluate
from recsim_stream.gc_tuning import settle_heap
from recsim_stream.progress import Progress
from recsim_stream.sgns_model import make_model
from recsim_stream.threads import pin_blas_threads

# The main model: a factory (config, number of events) -> StreamModel, scored as the top-level result.
MAIN_MODEL_FACTORY: Callable[[Config, int], StreamModel] | None = make_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("events", help="canonical events CSV (ts,user_id,item_id,event_type,session_id)")
    parser.add_argument("--items", help="canonical items CSV (item_id,title,category,price)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--baselines", action="store_true", help="also score POP, RECENT, ITEMKNN, ...")
    parser.add_argument("--plot", metavar="PNG", help="write a plot of rolling HR@k per model")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N rows of the file")
    parser.add_argument(
        "--no-content",
        action="store_true",
        help="switch the cold-start content tower off (sets content.enabled=false), to measure what it adds",
    )
    parser.add_argument(
        "--content-cost",
        action="store_true",
        help="also run the learner without the content tower on the same stream, interleaved event by "
        "event (so both see the same machine load), and report the tower's share of the learning time",
    )
    # --k, --refresh-every, --session-gap-s; and the learner's settings (--learn-dim, --pairs-window, ...)
    add_config_arguments(parser, ["eval", "learn", "pairs", "content", "process"], primary="eval")


def _progress_callback(total: int) -> Callable[[int, int], None]:
    """Adapts the driver's ``(done, total)`` callback to a ``Progress`` line on stderr."""
    progress = Progress("eval", total=total, every_s=2.0)

    def report(done: int, _total: int) -> None:
        progress.update(done - progress.count)
        if done == total:
            progress.finish()

    return report


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
        if args.no_content:
            config = dataclasses.replace(config, content=dataclasses.replace(config.content, enabled=False))
    except ConfigError as exc:
        print(f"recsim-stream eval: {exc}", file=sys.stderr)
        return 2
    pin_blas_threads(config.learn.blas_threads)
    settle_heap(config.process.gc_threshold)
    if args.limit < 0:
        print(f"recsim-stream eval: --limit must be >= 0, got {args.limit}", file=sys.stderr)
        return 2
    if args.content_cost and (args.no_content or not args.items or MAIN_MODEL_FACTORY is None):
        print(
            "recsim-stream eval: --content-cost needs --items and the tower on (no --no-content)",
            file=sys.stderr,
        )
        return 2
    if MAIN_MODEL_FACTORY is None and not args.baselines:
        print(
            "recsim-stream eval: no main model is registered yet (eval_cli.MAIN_MODEL_FACTORY); "
            "run with --baselines",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    try:
        rows = read_events(args.events)
        events = list(itertools.islice(rows, args.limit) if args.limit else rows)
        items = list(read_items(args.items)) if args.items else []
    except CsvFormatError as exc:
        print(f"recsim-stream eval: {exc}", file=sys.stderr)
        return 2
    models: list[StreamModel] = []
    main = None
    if MAIN_MODEL_FACTORY is not None:
        models.append(MAIN_MODEL_FACTORY(config, len(events)))
        main = models[0].name
    without_content = None
    if args.content_cost:
        assert MAIN_MODEL_FACTORY is not None
        off = dataclasses.replace(config, content=dataclasses.replace(config.content, enabled=False))
        models.append(MAIN_MODEL_FACTORY(off, len(events)))
        without_content = models[-1].name
    baselines = make_baselines(len(events)) if args.baselines else []
    models.extend(baselines)
    result = evaluate(events, models, config.eval, items, on_progress=_progress_callback(len(events)))
    total_wall_s = time.perf_counter() - started
    report = to_json(result, main, [b.name for b in baselines], total_wall_s, without_content)
    print(format_table(result))
    for line in format_speedups(report):
        print(line)
    if args.plot:
        print(f"plot: {write_plot(result, args.plot)}")
    if args.json:
        if hasattr(models[0], "shard_rows"):  # memory: what learn.expire_after_s bounds
            report["shard_rows_by_publish"] = models[0].shard_rows  # [events learned, live rows]
            report["rows_expired"] = models[0].rows_expired
        if without_content is not None:
            # The part of the tower's cost the cold-start issue budgets: training it (the rest is
            # encoding the catalogue, blending and calibrating, which serving cold items needs).
            training = getattr(models[0], "content_training_cpu_s", 0.0)
            report["content_training_share"] = training / result.models[0].learn_cpu_s
        print(json.dumps(report, sort_keys=True))
    return 0
