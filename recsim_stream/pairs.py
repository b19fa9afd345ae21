"""Skip-gram training pairs, made as each event arrives in its session.

Per accepted event (an ``Arrival`` from sessions.py), with ``item`` the event's item, ``S`` the
session's distinct items including this one, ``P`` the session's purchased items *before* this
event and ``C`` the up-to-``window`` items of the session's repeat-collapsed sequence before it:

    pairs = 2 * ( [not repeat]      * |{c in C : c != item}|       window, weight of the event's kind
                + [first seen]      * |P|                            joins a converted session
                + [first purchase]  * |{s in S : s != item, s not in P}|   global context
                + [first cart]      * |{s in S : s != item}| )       cart context

Every pair is emitted in both directions (center->context and context->center), never an item
with itself. ``C`` counts duplicates (A B A C: two A's in the window give two pairs, as in word2vec).

Global context (Airbnb's listing embeddings): over a session, every (distinct item, purchased
item) couple is paired exactly once with ``purchase_context_weight``, whichever came first: at
the purchase for the items already there, at arrival for items that come after. A cart pairs its
item once with the items present at that moment, with ``cart_context_weight``.

A repeat (same item as the previous event) adds no window pairs, but the *first* purchase or cart
of an item still adds its context pairs even when it repeats the previous view: on the REES46
sample 210 of 214 purchases and all 165 carts repeat the item viewed just before (view -> cart ->
purchase), so skipping repeats would switch the global context off on real streams.

Per event the buffer only records each emission (its item, weight and others, the others of every
emission in one flat list); ``take`` expands the records into both directions of every pair in a few
numpy passes. Building the pair lists per event and converting them into ``array``s there cost about
four times as much per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsim_stream.config import PairConfig
from recsim_stream.events import EventKind
from recsim_stream.sessions import Arrival


@dataclass(frozen=True, slots=True)
class PairBatch:
    centers: np.ndarray  # int64[n]
    contexts: np.ndarray  # int64[n]
    weights: np.ndarray  # float32[n]

    def __len__(self) -> int:
        return len(self.centers)


class PairBuffer:
    """Accumulates pairs per event; hands them out as one ``PairBatch``."""

    def __init__(self, config: PairConfig) -> None:
        self.config = config
        self._window = config.window
        self._kind_weight = {
            EventKind.CLICK: config.click_weight,
            EventKind.CART: config.cart_weight,
            EventKind.PURCHASE: config.purchase_weight,
        }
        self._purchase_context = config.purchase_context_weight
        self._cart_context = config.cart_context_weight
        self._reset()

    def _reset(self) -> None:
        self._items: list[int] = []  # per emission: the item paired with its others
        self._weights: list[float] = []  # per emission: the weight of its pairs
        self._sizes: list[int] = []  # per emission: how many others
        self._others: list[int] = []  # every emission's others, concatenated
        self._pairs = 0

    def __len__(self) -> int:
        return self._pairs

    def add(self, arrival: Arrival[int]) -> int:
        """Append the pairs of one accepted event; returns how many (the formula above)."""
        item = arrival.item
        session = arrival.session
        emitted = 0
        if not arrival.repeat:
            items = session.items
            end = len(items) - 1  # the event's own item is last
            context = items[end - self._window if end > self._window else 0 : end]
            if item in context:
                context = [c for c in context if c != item]
            if context:
                emitted += self._emit(item, context, self._kind_weight[arrival.kind])
        purchased = session.purchased
        if arrival.first_seen and purchased:
            others = [p for p in purchased if p != item]  # the event may itself be a first purchase
            if others:
                emitted += self._emit(item, others, self._purchase_context)
        if arrival.first_purchase:
            # Items already purchased were paired with this one when it arrived.
            others = [s for s in session.seen if s != item and s not in purchased]
            if others:
                emitted += self._emit(item, others, self._purchase_context)
        elif arrival.first_cart:
            others = [s for s in session.seen if s != item]
            if others:
                emitted += self._emit(item, others, self._cart_context)
        return emitted

    def _emit(self, item: int, others: list[int], weight: float) -> int:
        self._items.append(item)
        self._weights.append(weight)
        self._sizes.append(len(others))
        self._others += others
        self._pairs += 2 * len(others)
        return 2 * len(others)

    def take(self) -> PairBatch:
        """Everything accumulated since the last take, as numpy arrays; empties the buffer."""
        batch = _expand(
            np.array(self._items, dtype=np.int64),
            np.array(self._weights, dtype=np.float32),
            np.array(self._sizes, dtype=np.int64),
            np.array(self._others, dtype=np.int64),
        )
        self._reset()
        return batch


def _expand(items: np.ndarray, weights: np.ndarray, sizes: np.ndarray, others: np.ndarray) -> PairBatch:
    """Emission e pairs ``items[e]`` with its ``sizes[e]`` others, as the pairs (item, other) in the
    others' order and then (other, item) likewise, emissions one after the other."""
    emission = np.repeat(np.arange(len(items)), 2 * sizes)  # the emission of each pair
    start = np.zeros(len(sizes), dtype=np.int64)  # where each emission's others begin in ``others``
    np.cumsum(sizes[:-1], out=start[1:])
    first = start[emission]
    size = sizes[emission]
    rank = np.arange(len(emission)) - 2 * first  # the pair's position within its emission
    outward = rank < size  # item -> other; the second half of an emission is other -> item
    other = others[first + np.where(outward, rank, rank - size)]
    item = items[emission]
    return PairBatch(np.where(outward, item, other), np.where(outward, other, item), weights[emission])
