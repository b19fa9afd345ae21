"""``recsim-stream replay PATH``: a canonical CSV or a raw data set into Kafka, in event-time order.

Item metadata goes first (it is known up front for a data set), then the events, paced by
``--speed`` (60 = one hour of event time per minute; 0 = as fast as possible).
"""

from __future__ import annotations

import argparse
import itertools
import sys

from recsim_stream.canonical_csv import CsvFormatError
from recsim_stream.config import add_config_arguments, load_config
from recsim_stream.datasets import DatasetError, open_dataset
from recsim_stream.kafka_io import RecordProducer, ensure_topics
from recsim_stream.pacing import ReplayPacer
from recsim_stream.progress import Progress
from services.publishing import publish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="canonical events CSV (items.csv beside it is used), REES46 events.csv, "
        "or a MovieLens-100k folder of RecBole files",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="event-time seconds per wall second (0 = as fast as possible)",
    )
    parser.add_argument("--limit", type=int, default=0, help="publish only the first N events")
    add_config_arguments(parser, ["kafka"])


def run(args: argparse.Namespace) -> int:
    if args.speed < 0 or args.limit < 0:
        print("recsim-stream replay: --speed and --limit must be >= 0", file=sys.stderr)
        return 2
    config = load_config(args)
    try:
        dataset = open_dataset(args.path)
        items = dataset.items()
    except (DatasetError, CsvFormatError, OSError) as exc:
        print(f"recsim-stream replay: {exc}", file=sys.stderr)
        return 2
    events = dataset.events()
    if args.limit:
        events = itertools.islice(events, args.limit)
    ensure_topics(config.kafka)
    producer = RecordProducer(config.kafka)
    pacer = ReplayPacer(args.speed)
    progress = Progress("replay", total=args.limit or None)
    try:
        report = publish(itertools.chain(items, events), producer, progress, lambda e: pacer.wait_for(e.ts))
    except (DatasetError, CsvFormatError) as exc:
        print(f"recsim-stream replay: {exc}", file=sys.stderr)
        return 2
    finally:
        producer.close()
    print(report.line("replay", config.kafka.bootstrap), file=sys.stderr)
    return 0
