"""Child processes for benchmarks, fault drills and integration tests: start with a log file, stop
cleanly, find descendants; a private Ray head among them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsim_stream.local_broker import free_port

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# For a private head on loopback and every process joining it by address (updaters, drivers): Ray
# turns token auth on when ~/.ray holds a token, and they would then need that credential. A
# production cluster keeps it on.
PRIVATE_RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


class ProcessFailed(RuntimeError):
    """A child exited when it should still be running."""


class Children:
    """Child processes, each in its own process group with its output in a log file; stopped in
    reverse order with SIGINT to the group (so they finish cleanly), then SIGKILL after a timeout."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ProcessFailed(
                    f"{name} exited with status {proc.returncode}; its last output:\n{self.log(name)[-3000:]}"
                )

    def stop(self, name: str, timeout_s: float = 30.0) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        signal_group(proc.pid, signal.SIGKILL)  # anything it left behind in its group

    def kill(self, name: str) -> None:
        """kill -9 the child and everything in its process group, as a machine loss would."""
        proc = self.procs[name]
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, their children...)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            parent = ppid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def ray_head(
    children: Children, *, timeout_s: float = 60.0, object_store_bytes: int | None = None
) -> Iterator[str]:
    """A Ray head of our own (2 CPUs, loopback, its own temp folder and process group) started as one
    of ``children``; yields its address. Stopped by signalling its group, then by pid whatever it
    spawned outside the group: never ``ray stop``, which would stop every Ray on the machine."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rsray-"))  # short: Ray's socket paths must fit 107 bytes
    name = f"ray-head-{port}"
    argv = [RAY, "start", "--head", "--port", str(port), "--num-cpus", "2", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--temp-dir", str(temp),
            "--block"]  # fmt: skip
    if object_store_bytes is not None:
        argv += ["--object-store-memory", str(object_store_bytes)]
    head = children.start(name, argv, env=PRIVATE_RAY_ENV)
    try:
        deadline = time.monotonic() + timeout_s
        while "will now block" not in children.log(name):
            if head.poll() is not None or time.monotonic() > deadline:
                raise ProcessFailed(f"ray head did not start; its output:\n{children.log(name)[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        strays = [pid for pid in descendants(head.pid) if process_group(pid) not in (head.pid, None)]
        children.stop(name, timeout_s=10.0)
        for pid in strays:
            kill_pid(pid)
        del children.procs[name]
        shutil.rmtree(temp, ignore_errors=True)
