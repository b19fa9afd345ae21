"""Open sessions of one partition handed from the updater that gives it up to the one that takes it.

Several updaters share the ``events`` partitions as one consumer group, and sessions are per user,
so per partition: when a rebalance moves a partition, its open sessions must move with it, or the
pairs between a session's events before and after the move are never made. The updater giving a
partition up writes its session state with the offset it is valid at (every record before it
applied, none after) to ``<checkpoint.dir>/partitions/<topic>-<partition>.msgpack``, before its
offsets are committed. The next owner adopts the state only when that offset is exactly the one it
resumes from (the committed one): the hand-off is then exact. Anything else (no file, another
offset, a damaged file) means the previous owner crashed or its commit failed: the partition's
sessions start afresh and the records after the commit are re-read (at-least-once).

msgpack, never pickle: the folder may be shared between machines. Each file is written to a
temporary name, fsynced and renamed into place, so a reader sees a whole file or the previous one.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import msgpack

from recsim_stream.config import CheckpointConfig
from recsim_stream.durable import fsync_dir, write_durably

log = logging.getLogger(__name__)

FORMAT = 1
FOLDER = "partitions"
Partition = tuple[str, int]  # (topic, partition)
_TOPIC = re.compile(r"[A-Za-z0-9._-]+")  # Kafka's legal topic characters: safe in a file name


class HandoffError(ValueError):
    """A stored hand-off that cannot be read: its file, and what was expected."""


@dataclass(frozen=True)
class Handoff:
    """One partition's open sessions, valid at ``offset`` (the next record to read)."""

    offset: int
    sessions: dict  # SessionWindows.state() of this one partition
    names: dict[int, str]  # item id of every item key in those sessions


class Outcome(StrEnum):
    EXACT = "exact"  # the stored sessions are valid where this owner resumes: adopted
    AFRESH = "afresh"  # earlier records exist but no hand-off matches them: sessions start empty
    NEW = "new"  # nothing read from the partition yet: nothing to hand over


def decide(stored: Handoff | None, resume_at: int | None) -> Outcome:
    """What to do with a partition assigned at ``resume_at`` (None: nothing committed, so from the
    beginning), given what the previous owner stored."""
    if stored is not None and resume_at is not None and stored.offset == resume_at:
        return Outcome.EXACT
    if stored is None and not resume_at:
        return Outcome.NEW
    return Outcome.AFRESH


def session_keys(sessions: Mapping) -> set[int]:
    """Every item key in a ``SessionWindows.state()``: each session row's ``seen`` list (see
    ``Session._to_state``) holds all of its distinct items."""
    return {key for row in sessions["partitions"] for session in row[3] for key in session[8]}


def encode(partition: Partition, handoff: Handoff) -> bytes:
    return msgpack.packb(
        {
            "format": FORMAT,
            "topic": partition[0],
            "partition": partition[1],
            "offset": handoff.offset,
            "sessions": handoff.sessions,
            "names": [[key, name] for key, name in handoff.names.items()],
        },
        use_bin_type=True,
    )


def decode(data: bytes, partition: Partition, where: str) -> Handoff:
    """The hand-off in ``data``; ``HandoffError`` unless it is a well-formed one for ``partition``."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise HandoffError(f"{where}: expected a msgpack hand-off, got undecodable bytes ({exc})") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise HandoffError(f"{where}: expected a hand-off map of format {FORMAT}, got {str(body)[:80]!r}")
    if (body.get("topic"), body.get("partition")) != partition:
        raise HandoffError(
            f"{where}: expected partition {partition}, the file is for {(body.get('topic'), body.get('partition'))}"
        )
    offset, sessions, names = body.get("offset"), body.get("sessions"), body.get("names")
    if not isinstance(offset, int) or offset < 0:
        raise HandoffError(f"{where}: expected a non-negative offset, got {offset!r}")
    if not isinstance(sessions, dict) or not isinstance(sessions.get("partitions"), list):
        raise HandoffError(
            f"{where}: expected session state with a partitions list, got {str(sessions)[:80]!r}"
        )
    if not isinstance(names, list) or not all(
        isinstance(n, list) and len(n) == 2 and isinstance(n[0], int) and isinstance(n[1], str) for n in names
    ):
        raise HandoffError(f"{where}: expected names as [key, item id] pairs")
    return Handoff(offset, sessions, {key: name for key, name in names})


class HandoffStore:
    """One file per partition under ``<checkpoint.dir>/partitions``; the newest hand-off wins."""

    def __init__(self, config: CheckpointConfig) -> None:
        self.folder = Path(config.dir) / FOLDER

    def path(self, partition: Partition) -> Path:
        topic, number = partition
        if not _TOPIC.fullmatch(topic):
            raise ValueError(f"hand-off: expected a Kafka topic name, got {topic!r}")
        return self.folder / f"{topic}-{number}.msgpack"

    def write(self, partition: Partition, handoff: Handoff) -> None:
        """Durable once this returns: write a temporary file, fsync, rename, fsync the folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(partition)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write_durably(temp, encode(partition, handoff))
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(self.folder)

    def read(self, partition: Partition) -> Handoff | None:
        """The stored hand-off of ``partition``; None when there is none or it cannot be read (a
        damaged file is logged: the partition then starts afresh, which is safe)."""
        path = self.path(partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode(data, partition, str(path))
        except HandoffError as exc:
            log.warning("ignoring a damaged hand-off: %s", exc)
            return None
