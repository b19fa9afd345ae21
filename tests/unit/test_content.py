"""The content tower: offline MiniLM, cold-start placement on a clustered catalogue, state round trips.

The catalogue is the simulator's (recsim_stream.sim.Catalogue): titles, category and brand carry the
cluster. Learned vectors are planted: cluster centroid + noise, as SGNS would roughly give.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsim_stream.config import ContentConfig, SimConfig
from recsim_stream.content import ContentTower, MiniLMEncoder
from recsim_stream.content_features import FeatureSketch
from recsim_stream.events import ItemMeta
from recsim_stream.sim import Catalogue

DIM = 64
CLUSTERS = 20
NOISE = 0.15  # per dimension: a planted vector is ~1.2 noise for 1 centroid, cosine within a cluster ~0.4


class PlantedCatalogue:
    """A simulator catalogue plus planted learned vectors and a co-occurrence pair sampler."""

    def __init__(self, items: int, clusters: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.catalogue = Catalogue.generate(SimConfig(items=items, clusters=clusters), self.rng)
        self.items = list(self.catalogue.items)
        self.cluster = np.array([self.catalogue.cluster_of[item.item_id] for item in self.items])
        self.members = [np.flatnonzero(self.cluster == c) for c in range(clusters)]
        centroids = self.rng.normal(size=(clusters, DIM))
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        noise = NOISE * self.rng.normal(size=(len(self.items), DIM))
        self.vectors = (3.0 * (centroids[self.cluster] + noise)).astype(np.float32)

    def pairs(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Two items of one cluster per pair: what sessions of a clustered stream co-click."""
        clusters = self.rng.integers(0, len(self.members), batch)
        left = np.array([self.rng.choice(self.members[c]) for c in clusters])
        right = np.array([self.rng.choice(self.members[c]) for c in clusters])
        return left, right

    def train(self, tower: ContentTower, steps: int, batch: int) -> None:
        for _ in range(steps):
            left, right = self.pairs(batch)
            tower.train_step(
                [self.items[i] for i in left],
                [self.items[i] for i in right],
                self.vectors[left],
                self.vectors[right],
            )

    def new_items(self, count: int) -> list[ItemMeta]:
        clusters = self.rng.integers(0, len(self.members), count)
        return [self.catalogue.add_item(int(c), self.rng, ts=None) for c in clusters]

    def top_cluster_hit_rate(self, tower: ContentTower, new: list[ItemMeta]) -> float:
        """Share of new items whose highest mean cosine to a cluster's items is their own cluster's."""
        encoded = tower.encode(new)
        encoded /= np.linalg.norm(encoded, axis=1, keepdims=True)
        known = self.vectors / np.linalg.norm(self.vectors, axis=1, keepdims=True)
        cosines = encoded @ known.T
        mean_per_cluster = np.stack([cosines[:, m].mean(axis=1) for m in self.members], axis=1)
        truth = np.array([self.catalogue.cluster_of[item.item_id] for item in new])
        return float(np.mean(mean_per_cluster.argmax(axis=1) == truth))


@pytest.fixture(scope="module")
def planted() -> PlantedCatalogue:
    return PlantedCatalogue(items=1000, clusters=CLUSTERS, seed=5)


@pytest.fixture(scope="module")
def trained_tower(planted: PlantedCatalogue) -> ContentTower:
    tower = ContentTower(ContentConfig(encoder="hashed"), DIM)
    planted.train(tower, steps=400, batch=128)
    return tower


@pytest.fixture(scope="module")
def minilm() -> Iterator[MiniLMEncoder]:
    """Loaded with every socket connection refused, so loading proves it needs no network."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("test_content: network access is not allowed while loading MiniLM")

    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo
    socket.socket.connect, socket.getaddrinfo = refuse, refuse  # type: ignore[method-assign, assignment]
    try:
        encoder = MiniLMEncoder(ContentConfig(encoder="minilm"))
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo  # type: ignore[method-assign]
    assert attempts == []
    yield encoder


def _small_batch(
    planted: PlantedCatalogue, n: int = 8
) -> tuple[list[ItemMeta], list[ItemMeta], np.ndarray, np.ndarray]:
    left, right = np.arange(n), np.arange(n, 2 * n)
    return (
        [planted.items[i] for i in left],
        [planted.items[i] for i in right],
        planted.vectors[left],
        planted.vectors[right],
    )


def test_minilm_gives_unit_vectors_of_384_dimensions(minilm: MiniLMEncoder):
    vectors = minilm.encode(["wireless noise cancelling headphones", "running shoes"])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_gives_the_same_vector_for_the_same_text_twice(minilm: MiniLMEncoder):
    texts = ["Toy Story (1995)", "lenovo computers.notebook"]
    assert np.array_equal(minilm.encode(texts), minilm.encode(texts))


def test_minilm_gives_the_same_vector_in_a_second_instance(minilm: MiniLMEncoder):
    texts = ["Toy Story (1995)", "lenovo computers.notebook"]
    assert np.array_equal(MiniLMEncoder(ContentConfig(encoder="minilm")).encode(texts), minilm.encode(texts))


def test_minilm_puts_related_titles_closer_than_unrelated_ones(minilm: MiniLMEncoder):
    phone, handset, sofa = minilm.encode(["samsung smartphone", "android mobile phone", "leather sofa"])
    assert float(phone @ handset) > float(phone @ sofa)


def test_new_items_land_nearest_their_own_cluster(planted: PlantedCatalogue, trained_tower: ContentTower):
    assert planted.top_cluster_hit_rate(trained_tower, planted.new_items(200)) >= 0.95


def test_new_items_with_only_a_title_land_nearest_their_own_cluster(
    planted: PlantedCatalogue, trained_tower: ContentTower
):
    title_only = [ItemMeta(item.item_id, item.title) for item in planted.new_items(200)]
    assert planted.top_cluster_hit_rate(trained_tower, title_only) >= 0.9


def test_a_minilm_tower_places_new_items_nearest_their_own_cluster(minilm: MiniLMEncoder):
    planted = PlantedCatalogue(items=300, clusters=10, seed=9)
    tower = ContentTower(ContentConfig(encoder="minilm"), DIM, text_encoder=minilm)
    planted.train(tower, steps=200, batch=64)
    assert planted.top_cluster_hit_rate(tower, planted.new_items(100)) >= 0.95


def test_encoded_vectors_have_the_norm_of_the_learned_vectors(planted: PlantedCatalogue):
    tower = ContentTower(ContentConfig(), DIM)
    left, right, _, _ = _small_batch(planted)
    norm_three = np.full((8, DIM), 3.0 / np.sqrt(DIM), dtype=np.float32)
    tower.train_step(left, right, norm_three, norm_three)
    assert np.allclose(np.linalg.norm(tower.encode(left), axis=1), 3.0, atol=1e-4)


def test_two_towers_with_one_seed_encode_identically(planted: PlantedCatalogue):
    items = planted.items[:20]
    assert np.array_equal(
        ContentTower(ContentConfig(), DIM).encode(items), ContentTower(ContentConfig(), DIM).encode(items)
    )


def test_state_saved_as_npz_restores_identical_encodings(
    planted: PlantedCatalogue, trained_tower: ContentTower, tmp_path
):
    path = tmp_path / "tower.npz"
    np.savez(path, **trained_tower.state())
    with np.load(path, allow_pickle=False) as saved:
        state = {key: saved[key] for key in saved.files}
    restored = ContentTower(ContentConfig(encoder="hashed", seed=99), DIM)
    restored.restore(state)
    items = planted.items[:50]
    assert np.array_equal(restored.encode(items), trained_tower.encode(items))


def test_resuming_from_state_equals_continuing(planted: PlantedCatalogue):
    batches = [_small_batch(planted) for _ in range(5)]
    continued = ContentTower(ContentConfig(), DIM)
    for batch in batches[:3]:
        continued.train_step(*batch)
    resumed = ContentTower(ContentConfig(), DIM)
    resumed.restore(continued.state())
    for batch in batches[3:]:
        continued.train_step(*batch)
        resumed.train_step(*batch)
    assert resumed.steps == 5
    assert np.array_equal(resumed.encode(planted.items[:50]), continued.encode(planted.items[:50]))
    resumed_state, continued_state = resumed.state(), continued.state()
    for key, value in continued_state.items():  # the optimizers' moments included
        assert np.array_equal(resumed_state[key], value), key


def test_a_fresh_state_restores_into_a_fresh_tower(planted: PlantedCatalogue):
    restored = ContentTower(ContentConfig(seed=3), DIM)
    restored.restore(ContentTower(ContentConfig(), DIM).state())
    assert np.array_equal(
        restored.encode(planted.items[:5]), ContentTower(ContentConfig(), DIM).encode(planted.items[:5])
    )


def test_restore_refuses_the_state_of_another_tower_size(trained_tower: ContentTower):
    other = ContentTower(ContentConfig(hidden=32), DIM)
    with pytest.raises(ValueError, match="must have shape"):
        other.restore(trained_tower.state())


def test_train_step_refuses_vectors_of_another_dimension(planted: PlantedCatalogue):
    left, right, left_vectors, right_vectors = _small_batch(planted)
    with pytest.raises(ValueError, match=r"left_vectors must have shape \(8, 64\), got \(8, 32\)"):
        ContentTower(ContentConfig(), DIM).train_step(left, right, left_vectors[:, :32], right_vectors)


def test_encode_of_no_items_is_an_empty_matrix():
    assert ContentTower(ContentConfig(), DIM).encode([]).shape == (0, DIM)


def test_an_untrained_tower_encodes_the_feature_sketch(planted: PlantedCatalogue):
    items = planted.items[:20]
    sketch = FeatureSketch(DIM).encode(items, np.zeros((len(items), 4), dtype=bool))
    assert np.allclose(ContentTower(ContentConfig(), DIM).encode_unit(items), sketch, atol=1e-6)


@pytest.mark.parametrize("sketch_weight", [1.0, 0.3])
def test_an_untrained_tower_encodes_from_the_sketch_alone_as_its_network_would_to_the_bit(
    planted: PlantedCatalogue, sketch_weight: float
):
    items = planted.items[:50]
    tower = ContentTower(ContentConfig(sketch_weight=sketch_weight), DIM)
    encoded = tower.encode_unit(items)
    assert len(tower.features.text_cache) == 0  # the shortcut ran: no title was turned into text features
    with torch.no_grad():
        network = F.normalize(tower._net(tower.features.extract(items)), dim=1).numpy()
    assert np.array_equal(encoded, network)


def test_a_tower_whose_last_layer_only_has_a_bias_encodes_through_its_network(planted: PlantedCatalogue):
    items = planted.items[:50]
    tower = ContentTower(ContentConfig(), DIM)
    with torch.no_grad():
        tower._net.mlp[-1].bias.fill_(0.5)
        network = F.normalize(tower._net(tower.features.extract(items)), dim=1).numpy()
    assert np.array_equal(tower.encode_unit(items), network)


def test_an_untrained_tower_without_the_sketch_is_not_the_sketch(planted: PlantedCatalogue):
    items = planted.items[:20]
    sketch = FeatureSketch(DIM).encode(items, np.zeros((len(items), 4), dtype=bool))
    unsketched = ContentTower(ContentConfig(sketch_weight=0.0), DIM).encode_unit(items)
    assert not np.allclose(unsketched, sketch, atol=0.1)


def test_training_moves_the_tower_off_the_sketch(planted: PlantedCatalogue, trained_tower: ContentTower):
    items = planted.items[:20]
    sketch = FeatureSketch(DIM).encode(items, np.zeros((len(items), 4), dtype=bool))
    assert not np.allclose(trained_tower.encode_unit(items), sketch, atol=0.1)


def test_the_towers_sparse_optimizer_gives_torchs_sparse_adam_to_the_bit(planted: PlantedCatalogue):
    import torch

    batches = [_small_batch(planted) for _ in range(6)]
    ours = ContentTower(ContentConfig(), DIM)
    reference = ContentTower(ContentConfig(), DIM)
    sparse = reference._optimizers["sparse"]
    reference._optimizers["sparse"] = torch.optim.SparseAdam(
        sparse.param_groups[0]["params"], lr=ContentConfig().learning_rate
    )
    for batch in batches:
        ours.train_step(*batch)
        reference.train_step(*batch)
    ours_state, reference_state = ours.state(), reference.state()
    assert ours_state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        assert np.array_equal(ours_state[key], value), key
