"""``recsim-stream serve``: the HTTP query API over the freshest published snapshot.

It watches the snapshot folder the updater writes (a shared folder for several replicas), builds each
new serving state off the request path and swaps it in with one reference assignment. /metrics is on
the API's own port; ``--metrics-port`` also exposes it on a separate port for a uniform scrape config.
"""

from __future__ import annotations

import argparse
import sys

from recsim_stream.config import add_config_arguments, load_config
from recsim_stream.http_api import serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ["api", "snapshot", "index", "metrics", "process"], primary="api")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    print(
        f"serve: http://{config.api.host}:{config.api.port} over snapshots in {config.snapshot.dir}",
        file=sys.stderr,
        flush=True,
    )
    serve(config)
    return 0
