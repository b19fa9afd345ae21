"""``recsim-stream convert SOURCE OUT_DIR``: a raw data set to the canonical CSV format."""

from __future__ import annotations

import argparse
import sys

from recsim_stream.canonical_csv import CsvFormatError
from recsim_stream.datasets import DatasetError, convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="REES46 events.csv, a MovieLens-100k folder (RecBole files), or a canonical CSV"
    )
    parser.add_argument("out_dir", help="folder for events.csv and items.csv")
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of stopping"
    )


def run(args: argparse.Namespace) -> int:
    try:
        result = convert(args.source, args.out_dir, errors="skip" if args.skip_bad_rows else "raise")
    except (DatasetError, CsvFormatError, OSError) as exc:
        print(f"recsim-stream convert: {exc}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(result.skipped.items())) or "none"
    print(
        f"convert: {result.format.value}: {result.events:,} events, {result.items:,} items -> {args.out_dir} "
        f"(skipped rows: {skipped})"
    )
    return 0
