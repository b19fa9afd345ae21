"""A parameter shard under any order of what trainers, the snapshotter and checkpoints do to it:
pulls, pushes (with the rows a pull handed out, even after an expiry recycled them), cold-start
initial rows, expiry, delta exports and restores.

What is checked is what the rest of the system builds on: a reader that took a full export and then
every delta export since holds, for every live key, exactly the shard's row (snapshot chains are
built this way); a shard restored from its checkpoint state at any point goes on exactly like one
that was not; an expired key comes back as a new row. (``test_shard_props.py`` checks exports and
restores over pulls, pushes and expiry given as lists of steps; this adds the calls and readers above.)"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from recsim_stream.config import LearnConfig
from recsim_stream.shard import ParameterShard, RowUpdate, ShardExport, initial_input

DIM = 4
CONFIG = LearnConfig(dim=DIM, expire_after_s=10.0)
keys_ = st.lists(st.integers(0, 11), min_size=1, max_size=6)


def _sorted(export: ShardExport) -> tuple[np.ndarray, ...]:
    order = np.argsort(export.keys)
    return export.keys[order], export.input[order], export.output[order], export.counts[order]


class ShardSequences(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.shard = ParameterShard(CONFIG)
        self.twin = ParameterShard(CONFIG)  # the same calls, never restored
        self.rng = np.random.default_rng(0)
        self.ts = 0.0
        self.pulled: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # keys and rows
        self.reader: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # a snapshot chain's rows
        self.read_version: int | None = None

    def _both(self, method: str, *args, **kwargs):
        answer = getattr(self.shard, method)(*args, **kwargs)
        twin = getattr(self.twin, method)(*args, **kwargs)
        return answer, twin

    @rule(inputs=keys_, outputs=keys_)
    def pull_for_update(self, inputs: list[int], outputs: list[int]) -> None:
        pieces = [(np.array(sorted(set(inputs))), np.array(sorted(set(outputs))))]
        (*_, in_rows, out_rows), _ = self._both("pull_for_update", pieces)
        self.pulled.append((*pieces[0], in_rows, out_rows))

    @rule(
        data=st.data(),
        advance=st.floats(0, 8),
        zero_in=st.booleans(),
        with_counts=st.booleans(),
        stale=st.booleans(),
    )
    def push(self, data, advance: float, zero_in: bool, with_counts: bool, stale: bool) -> None:
        """An update of rows pulled earlier (their rows handed back), or of fresh keys."""
        if self.pulled and stale:
            in_keys, out_keys, in_rows, out_rows = self.pulled[
                data.draw(st.integers(0, len(self.pulled) - 1))
            ]
        else:
            in_keys, out_keys = np.array(data.draw(keys_)), np.array(data.draw(keys_))
            in_rows = out_rows = None
        self.ts += advance
        grad_in = self.rng.standard_normal((len(in_keys), DIM)).astype(np.float32)
        if zero_in:  # keys that were only negatives
            grad_in[:] = 0.0
        grad_out = self.rng.standard_normal((len(out_keys), DIM)).astype(np.float32)
        counts = (np.ones if with_counts else np.zeros)(len(in_keys), np.int64)
        update = RowUpdate(
            in_keys,
            grad_in,
            out_keys,
            grad_out,
            counts,
            np.zeros(len(out_keys), np.int64),
            self.ts,
            in_rows,
            out_rows,
        )
        self._both("apply", update)

    @rule(keys=keys_)
    def set_initial(self, keys: list[int]) -> None:
        vectors = self.rng.standard_normal((len(keys), DIM)).astype(np.float32)
        self._both("set_initial", np.array(keys), vectors, -vectors, ts=self.ts)

    @rule(advance=st.floats(0, 20))
    def expire(self, advance: float) -> None:
        self.ts += advance
        expired, twin_expired = self._both("expire", self.ts)
        assert sorted(expired.tolist()) == sorted(twin_expired.tolist())
        live = set(self.shard.export().keys.tolist())
        assert not live & set(expired.tolist())

    @rule(keys=keys_)
    def expired_keys_come_back_new(self, keys: list[int]) -> None:
        live = set(self.shard.export().keys.tolist())
        new = np.array(sorted(set(keys) - live), dtype=np.int64)
        (inputs, outputs), _ = self._both("pull", new)
        assert np.array_equal(inputs, initial_input(new, DIM, CONFIG.seed))
        assert not outputs.any()

    @rule()
    def read_delta(self) -> None:
        """What the snapshotter does: a full export first, then the rows changed since the last."""
        export = self.shard.export(self.read_version)
        for key, i, o, c in zip(
            export.keys.tolist(), export.input, export.output, export.counts.tolist(), strict=True
        ):
            self.reader[key] = (i.copy(), o.copy(), c)
        self.read_version = export.version
        full = self.shard.export()
        for key, i, o, c in zip(
            full.keys.tolist(), full.input, full.output, full.counts.tolist(), strict=True
        ):
            held = self.reader[key]
            assert np.array_equal(held[0], i) and np.array_equal(held[1], o) and held[2] == c, key

    @rule()
    def forget_what_the_reader_has(self) -> None:
        if self.read_version is not None:
            self._both("forget_removed", self.read_version)

    @rule()
    def restart_from_checkpoint(self) -> None:
        restored = ParameterShard(CONFIG)
        restored.restore(self.shard.state())
        self.shard = restored

    @invariant()
    def same_as_the_twin(self) -> None:
        mine, twins = _sorted(self.shard.export()), _sorted(self.twin.export())
        assert all(np.array_equal(a, b) for a, b in zip(mine, twins, strict=True))
        assert len(np.unique(mine[0])) == len(mine[0]) == self.shard.stats()["rows"]
        assert self.shard.version == self.twin.version


ShardSequences.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
test_shard_sequences = ShardSequences.TestCase
