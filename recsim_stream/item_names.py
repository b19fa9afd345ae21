"""The item ids every updater of a group has seen, for the one that publishes snapshots.

Shard rows are keyed by a stable hash of the item id (sharding.py), so several updaters train the
same rows without talking to each other; but a snapshot names its rows, and the publisher knows the
ids only of the items its own partitions brought. Each updater appends the ids it sees for the first
time to this log (held by one shared Ray actor, ray_actors.SharedNames); the publisher reads what
was appended since its last read before each snapshot. Append-only, so a read is a position.
"""

from __future__ import annotations


class NameLog:
    """Distinct item ids in first-seen order."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._known: set[str] = set()

    def add(self, names: list[str]) -> int:
        """Append the ids not yet known; returns the log's length."""
        for name in names:
            if name not in self._known:
                self._known.add(name)
                self._names.append(name)
        return len(self._names)

    def since(self, position: int) -> tuple[list[str], int]:
        """The ids appended after ``position``, and the position to read from next."""
        return self._names[position:], len(self._names)
