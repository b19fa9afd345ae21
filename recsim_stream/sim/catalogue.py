"""A catalogue with latent clusters whose content carries the cluster.

Each cluster has its own small vocabulary and brands, a category path and a price level, so a content
model can recover the cluster from an item's title, category and price; that is what the cold-start
tower is tested against. Popularity inside a cluster follows Zipf (``popularity_skew``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsim_stream.config import SimConfig
from recsim_stream.events import ItemMeta

# Department -> sub-categories; clusters take these paths in order, then repeat with a numeric suffix.
_DEPARTMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("electronics", ("smartphone", "headphone", "tablet", "camera", "tv", "smartwatch")),
    ("sports", ("running", "cycling", "swimming", "tennis", "fitness", "camping")),
    ("home", ("kitchen", "bedding", "lighting", "furniture", "decor", "bath")),
    ("fashion", ("shoes", "dresses", "jackets", "bags", "watches", "jewelry")),
    ("books", ("fiction", "history", "science", "cooking", "travel", "children")),
    ("beauty", ("skincare", "makeup", "fragrance", "haircare", "nails", "shaving")),
    ("toys", ("puzzles", "dolls", "construction", "outdoor", "games", "plush")),
    ("garden", ("tools", "plants", "watering", "grills", "furniture", "lighting")),
    ("auto", ("tyres", "audio", "cleaning", "tools", "lights", "seats")),
    ("computers", ("notebook", "desktop", "monitor", "keyboard", "storage", "printer")),
)
_SHARED_WORDS = ("new", "pro", "classic", "set", "mini", "max", "plus", "original")
_CONSONANTS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"
WORDS_PER_CLUSTER = 12
_RETIRE_DRAWS = 32  # random items tried before a retirement scans the catalogue
BRANDS_PER_CLUSTER = 3


@dataclass(frozen=True)
class ClusterProfile:
    """What items of one cluster look like."""

    category: str
    words: tuple[str, ...]
    brands: tuple[str, ...]
    log_price_mean: float
    log_price_sigma: float


def _word(rng: np.random.Generator, syllables: int) -> str:
    c = rng.integers(0, len(_CONSONANTS), syllables)
    v = rng.integers(0, len(_VOWELS), syllables)
    return "".join(_CONSONANTS[a] + _VOWELS[b] for a, b in zip(c, v, strict=True))


def _category(cluster: int) -> str:
    department, subs = _DEPARTMENTS[cluster % len(_DEPARTMENTS)]
    sub = subs[(cluster // len(_DEPARTMENTS)) % len(subs)]
    rounds = cluster // (len(_DEPARTMENTS) * len(subs))
    return f"{department}.{sub}" if rounds == 0 else f"{department}.{sub}{rounds + 1}"


def _profiles(clusters: int, rng: np.random.Generator) -> list[ClusterProfile]:
    profiles = []
    for cluster in range(clusters):
        words = tuple(_word(rng, int(rng.integers(2, 4))) for _ in range(WORDS_PER_CLUSTER))
        brands = tuple(_word(rng, 2) for _ in range(BRANDS_PER_CLUSTER))
        profiles.append(
            ClusterProfile(
                category=_category(cluster),
                words=words,
                brands=brands,
                log_price_mean=float(rng.uniform(np.log(5.0), np.log(800.0))),
                log_price_sigma=0.35,
            )
        )
    return profiles


class Catalogue:
    """Items, their ground-truth cluster and Zipf popularity; grows with ``add_item``."""

    def __init__(self, config: SimConfig, profiles: list[ClusterProfile]) -> None:
        self.config = config
        self.profiles = profiles
        self.items: list[ItemMeta] = []
        self.cluster_of: dict[str, int] = {}
        self.item_ids: list[str] = []  # item index -> id, for building events without a lookup
        self.members: list[list[int]] = [[] for _ in profiles]  # cluster -> item indices
        self._weights: list[float] = []  # item index -> popularity weight (0 once retired)
        self._sampler: tuple[np.ndarray, np.ndarray] | None = None
        self.retired: set[int] = set()  # item indices taken off the catalogue
        self._live = [0] * len(profiles)  # cluster -> items not retired

    @classmethod
    def generate(cls, config: SimConfig, rng: np.random.Generator, ts: float | None = None) -> Catalogue:
        """``config.items`` items over ``config.clusters`` clusters, every cluster non-empty."""
        catalogue = cls(config, _profiles(config.clusters, rng))
        extra = rng.multinomial(config.items - config.clusters, np.full(config.clusters, 1 / config.clusters))
        for cluster, size in enumerate(extra + 1):
            for rank in range(1, int(size) + 1):
                catalogue._append(cluster, rng, ts, rank**-config.popularity_skew)
        return catalogue

    def add_item(self, cluster: int, rng: np.random.Generator, ts: float | None) -> ItemMeta:
        """List a new item in ``cluster``; its popularity is that of a random rank of the cluster."""
        if not 0 <= cluster < len(self.profiles):
            raise ValueError(f"cluster must be in [0, {len(self.profiles)}), got {cluster}")
        rank = int(rng.integers(1, len(self.members[cluster]) + 2))
        return self._append(cluster, rng, ts, rank**-self.config.popularity_skew)

    def retire(self, rng: np.random.Generator, ts: float | None = None) -> int | None:
        """Take a random item listed before ``ts`` off the catalogue, never a cluster's last one:
        sessions stop drawing it. Returns its index, or None when no item qualifies."""

        def retirable(i: int) -> bool:
            listed = self.items[i].ts
            return (
                i not in self.retired
                and self._live[self._cluster(i)] > 1
                and (ts is None or listed is None or listed < ts)
            )

        # Draws until one qualifies (cheap while most items do), then a scan of the catalogue.
        drawn = rng.integers(0, len(self.items), _RETIRE_DRAWS).tolist()
        index = next((i for i in drawn if retirable(i)), None)
        if index is None:
            candidates = [i for i in range(len(self.items)) if retirable(i)]
            if not candidates:
                return None
            index = candidates[int(rng.integers(0, len(candidates)))]
        self.retired.add(index)
        self._live[self._cluster(index)] -= 1
        self._weights[index] = 0.0
        self._sampler = None
        return index

    def _cluster(self, index: int) -> int:
        return self.cluster_of[self.item_ids[index]]

    def _append(self, cluster: int, rng: np.random.Generator, ts: float | None, weight: float) -> ItemMeta:
        profile = self.profiles[cluster]
        index = len(self.items)
        picks = rng.integers(0, WORDS_PER_CLUSTER, 2)
        brand = profile.brands[int(rng.integers(0, BRANDS_PER_CLUSTER))]
        words = [brand, profile.words[picks[0]], profile.words[picks[1]]]
        if rng.random() < 0.5:
            words.append(_SHARED_WORDS[int(rng.integers(0, len(_SHARED_WORDS)))])
        price = round(float(np.exp(rng.normal(profile.log_price_mean, profile.log_price_sigma))), 2)
        item = ItemMeta(
            item_id=f"i{index}",
            title=" ".join(words),
            category=profile.category,
            price=price,
            attributes={"brand": brand},
            ts=ts,
        )
        self.items.append(item)
        self.cluster_of[item.item_id] = cluster
        self.item_ids.append(item.item_id)
        self.members[cluster].append(index)
        self._live[cluster] += 1
        self._weights.append(weight)
        self._sampler = None
        return item

    def sample(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item index per entry of ``clusters``, by popularity within that cluster."""
        if self._sampler is None:
            self._sampler = self._build_sampler()
        flat_items, cdf = self._sampler
        position = np.searchsorted(cdf, clusters + rng.random(len(clusters)), side="right")
        return flat_items[np.minimum(position, len(flat_items) - 1)]

    def _build_sampler(self) -> tuple[np.ndarray, np.ndarray]:
        # Cluster c's cumulative popularity occupies (c, c + 1], so one searchsorted serves all clusters.
        weights = np.asarray(self._weights)
        flat, cdf = [], []
        for cluster, members in enumerate(self.members):
            idx = np.asarray(members, dtype=np.int64)
            cum = np.cumsum(weights[idx])
            cum = cluster + cum / cum[-1]
            cum[-1] = cluster + 1.0
            flat.append(idx)
            cdf.append(cum)
        return np.concatenate(flat), np.concatenate(cdf)
