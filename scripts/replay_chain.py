"""A kept snapshot chain (``bench e2e --keep-logs``) that a replay script advances version by version;
shared by ``replay_queries.py`` and ``replay_http.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recsim_stream.config import SnapshotConfig
from recsim_stream.snapshot import LATEST, SnapshotStore, folder_name


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Chain:
    """The chain's versions with their creation times; ``point`` moves its ``LATEST`` pointer and
    ``restore`` puts back the one it had."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.store = SnapshotStore(SnapshotConfig(dir=str(folder)))
        self.versions = self.store.versions()
        self.created = {v: self._manifest(v)["created_at"] for v in self.versions}
        self.kept = (folder / LATEST).read_text()

    def _manifest(self, version: int) -> dict:
        return json.loads((self.folder / folder_name(version) / "manifest.json").read_text())

    def point(self, version: int) -> None:
        """Make ``version`` the newest, atomically: a watcher reading a half-written pointer refuses it
        as corrupt (seen while replaying with a plain write)."""
        self._write(f"{version}\n")

    def since_first(self, version: int) -> float:
        """Seconds from the first version's creation to ``version``'s: when a replay makes it the newest."""
        return self.created[version] - self.created[self.versions[0]]

    def ids(self, version: int) -> list[str]:
        return np.load(self.folder / folder_name(version) / "ids.npy", allow_pickle=False).tolist()

    def restore(self) -> None:
        self._write(self.kept)

    def _write(self, text: str) -> None:
        staged = self.folder / f"{LATEST}.replay"
        staged.write_text(text)
        staged.replace(self.folder / LATEST)
