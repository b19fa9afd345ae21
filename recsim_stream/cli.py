"""The ``recsim-stream`` command: one subcommand per service or tool.

Each subcommand module is imported only when it runs, so ``--help`` stays fast and a command that
does not need torch or Ray does not pay for importing them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "services.local_stack",
        "run the whole local system: broker, simulator, updater, query API, Prometheus",
    ),
    "simulate": ("services.simulator", "stream simulated clicks, carts and purchases into Kafka (or a CSV)"),
    "replay": ("services.replay", "publish a canonical CSV or a raw data set into Kafka in event-time order"),
    "convert": ("services.convert", "convert a raw data set (REES46, MovieLens) to the canonical CSV format"),
    "train": (
        "services.updater",
        "the updater: consume events, window sessions, train embeddings on Ray shards",
    ),
    "serve": ("services.query_api", "the HTTP query API over the freshest published snapshot"),
    "eval": ("recsim_stream.eval_cli", "prequential (test-then-train) evaluation on a canonical CSV"),
    "bench": ("services.bench", "end-to-end benchmark through the real components"),
    "drill": (
        "services.drill",
        "fault drill: kill the updater or a shard actor repeatedly, account for every event",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsim-stream",
        description="Fresh item embeddings from streaming clicks and purchases. "
        "Every setting is a flag and an environment variable (RECSIM_<SECTION>_<FIELD>); see COMMAND --help.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints help or a usage error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"recsim-stream {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    _configure_logging()
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"recsim-stream {name}: interrupted", file=sys.stderr)
        return 130


def _configure_logging() -> None:
    """recsim's own log lines at RECSIM_LOG_LEVEL (default INFO) on stderr, with a timestamp;
    client libraries (kafka-python, Ray) only from WARNING, since their INFO lines are per request."""
    level = os.environ.get("RECSIM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recsim_stream").setLevel(level)
    logging.getLogger("services").setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
