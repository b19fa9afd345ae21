"""Users: interests over a few clusters that drift, and when each user's next session starts."""

from __future__ import annotations

import numpy as np

from recsim_stream.config import SimConfig


class Users:
    """Per-user arrays; row ``u`` is user ``f"u{u}"``."""

    def __init__(self, config: SimConfig, rng: np.random.Generator, start_ts: float) -> None:
        n, k = config.users, min(config.interests_per_user, config.clusters)
        self.config = config
        self.ids = [f"u{u}" for u in range(n)]
        # Each user follows 1..k clusters with Dirichlet weights; unused slots have weight 0. A cluster
        # drawn twice just gets both weights.
        self.clusters = rng.integers(0, config.clusters, (n, k))
        follows = rng.integers(1, k + 1, n)
        weights = rng.dirichlet(np.ones(k), n) * (np.arange(k) < follows[:, None])
        self.weights = weights / weights.sum(axis=1, keepdims=True)
        # Spread first sessions over one mean cycle so the stream starts near its steady rate.
        self.next_start = start_ts + rng.uniform(0.0, self.mean_cycle_s(), n)
        self.sessions_started = np.zeros(n, dtype=np.int64)

    def mean_cycle_s(self) -> float:
        """Mean event time from one session's start to the next one's."""
        c = self.config
        return c.session_events * c.dwell_median_s + c.session_gap_s + c.session_gap_mean_s

    def session_clusters(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The cluster each of ``users`` starts a session on, drawn by interest weight."""
        cum = np.cumsum(self.weights[users], axis=1)
        slot = (rng.random(len(users))[:, None] >= cum).sum(axis=1)
        slot = np.minimum(slot, cum.shape[1] - 1)
        return self.clusters[users, slot]

    def drift(self, events: int, rng: np.random.Generator) -> None:
        """After ``events`` events, each user moves one interest to another cluster w.p. drift."""
        p = 1.0 - (1.0 - self.config.drift_per_1k_events) ** (events / 1000.0)
        movers = np.flatnonzero(rng.random(len(self.ids)) < p)
        if len(movers) == 0:
            return
        followed = (self.weights[movers] > 0).sum(axis=1)
        slots = (rng.random(len(movers)) * followed).astype(np.int64)
        self.clusters[movers, slots] = rng.integers(0, self.config.clusters, len(movers))
