"""Which triplets an epoch trains on, in which order, cut into which batches.

Per epoch: every street triplet once (mix.street) plus a share of catalog triplets (mix.catalog, relative to the
street count), out-of-class negatives only during the curriculum epochs, plus every curated triplet (`always`:
e.g. approved in review), whatever the mix. Batches are either random, or drawn
from one class at a time (class_batches: the in-batch negatives are then all same-category, hard ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ml.training.config import TrainConfig
from ml.triplets import MinedTriplet

Span = tuple[int, int]  # [lo, hi) rows of the epoch's order


def _easy(triplets: list[MinedTriplet]) -> list[MinedTriplet]:
    return [t for t in triplets if t.negative_kind == "out_of_class"] or triplets


def fixed_spans(n: int, batch_size: int) -> list[Span]:
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def one_class_spans(labels_in_order: np.ndarray, batch_size: int) -> list[Span]:
    """Batches of at most batch_size consecutive rows that never cross a change of label."""
    spans, start, n = [], 0, len(labels_in_order)
    while start < n:
        other = labels_in_order[start:] != labels_in_order[start]
        class_end = start + int(np.argmax(other)) if other.any() else n
        end = min(start + batch_size, n, class_end)
        spans.append((start, end))
        start = end
    return spans


def one_class_order(labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Rows grouped into one-class chunks of at most batch_size (members shuffled), the chunks shuffled."""
    batches: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    if not batches:
        return np.zeros(0, int)
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


@dataclass
class Epoch:
    triplets: list[MinedTriplet]  # the epoch's chosen triplets
    order: np.ndarray  # the order they are trained in
    spans: list[Span]  # the batches, as [lo, hi) ranges of `order`


class EpochSampler:
    """Draws each epoch's triplets and batches from one numpy Generator (seeded by train.seed)."""

    def __init__(
        self,
        cfg: TrainConfig,
        n_street: int,
        n_catalog_available: int,
        n_classes: int,
        label_of: Callable[[MinedTriplet], int],
        rng: np.random.Generator,
        n_always: int = 0,
    ) -> None:
        self.cfg, self.label_of, self.rng = cfg, label_of, rng
        mix = cfg.mix
        self.n_street = int(round(n_street * float(mix.get("street", 1.0))))
        base = n_street if n_street else n_catalog_available
        self.n_catalog = min(int(round(base * float(mix.get("catalog", 0)))), n_catalog_available)
        steps = max(1, math.ceil((self.n_street + self.n_catalog + n_always) / int(cfg.batch_size)))
        if cfg.class_batches:
            steps += n_classes  # one partial batch per class
        if cfg.max_steps_per_epoch:
            steps = min(steps, int(cfg.max_steps_per_epoch))
        self.steps_per_epoch = steps

    def choose(
        self,
        street: Sequence[MinedTriplet],
        catalog: Sequence[MinedTriplet],
        easy: bool,
        always: Sequence[MinedTriplet] = (),
    ) -> list[MinedTriplet]:
        pick_street = _easy(list(street)) if easy else list(street)
        pick_cat = _easy(list(catalog)) if easy else list(catalog)
        chosen = [pick_street[i] for i in self.rng.permutation(len(pick_street))[: self.n_street]]
        if self.n_catalog and pick_cat:
            drawn = self.rng.choice(len(pick_cat), min(self.n_catalog, len(pick_cat)), replace=False)
            chosen += [pick_cat[i] for i in drawn]
        return chosen + list(always)

    def epoch(
        self,
        epoch: int,
        street: Sequence[MinedTriplet],
        catalog: Sequence[MinedTriplet],
        always: Sequence[MinedTriplet] = (),
    ) -> Epoch:
        easy = epoch <= int(self.cfg.curriculum_epochs or 0)
        chosen = self.choose(street, catalog, easy, always)
        batch_size = int(self.cfg.batch_size)
        if self.cfg.class_batches:
            labels = np.array([self.label_of(t) for t in chosen])
            order = one_class_order(labels, batch_size, self.rng)
            spans = one_class_spans(labels[order], batch_size)
        else:
            order = self.rng.permutation(len(chosen))
            spans = fixed_spans(len(order), batch_size)
        return Epoch(chosen, order, spans[: self.steps_per_epoch])
