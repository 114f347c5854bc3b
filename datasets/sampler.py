"""Epoch sampling: uniform over images, plus a class-uniform share (the reference's scheme).

Each epoch has ``len(dataset)`` samples (padded, as ``DistributedSampler``
pads, to a multiple of ``num_replicas``). ``round(class_uniform_pct * n)``
of them are class-uniform: split evenly over the classes that have centroids
(the remainder goes to randomly chosen classes), and within a class drawn
without replacement from its centroids (cycling when a class has fewer
centroids than draws). The rest are images drawn without replacement.
The whole plan is a function of ``(seed, epoch)``, so every rank computes the
same plan and takes every ``num_replicas``-th sample from position ``rank``:
disjoint shares.

Samples are plain indices, or ``(index, (x, y))`` for class-uniform ones;
:class:`datasets.base.SegmentationDataset` understands both.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from datasets.errors import DatasetError

log = logging.getLogger(__name__)
Key = int | tuple[int, tuple[int, int]]


class ClassUniformSampler(torch.utils.data.Sampler):
    """Deterministic per ``(seed, epoch)``; resumable mid-epoch through ``start_index``.

    ``start_index`` is the number of this rank's samples of the epoch already consumed: the
    trainer counts them with :meth:`advance`, checkpoints them with :meth:`state_dict` and
    restores them with :meth:`load_state_dict` (the one record of a run's position).
    ``set_epoch(e)`` with a new epoch resets ``start_index`` to 0; calling it
    with the epoch restored by :meth:`load_state_dict` keeps the position.
    """

    def __init__(self, dataset, class_uniform_pct: float = 0.0, class_uniform_tile: int = 1024,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                 cache_dir: str | os.PathLike | None = None, workers: int | None = None) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if class_uniform_tile < 1:
            raise ValueError(f"class_uniform_tile must be >= 1, got {class_uniform_tile}")
        if len(dataset) == 0:
            raise DatasetError(f"cannot sample from an empty dataset {dataset!r}")
        self.dataset = dataset
        self.n = len(dataset)
        self.class_uniform_tile = class_uniform_tile
        self.num_replicas, self.rank = num_replicas, rank
        self.seed, self.shuffle = seed, shuffle
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.workers = workers
        self.epoch = 0
        self.start_index = 0
        self._by_class: list[np.ndarray] | None = None
        self.class_uniform_pct = class_uniform_pct
        if class_uniform_pct > 0:
            self.centroids_by_class()  # build (or load) the cache now, not in the first step

    @property
    def class_uniform_pct(self) -> float:
        return self._pct

    @class_uniform_pct.setter
    def class_uniform_pct(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"class_uniform_pct must be in [0, 1], got {value}")
        self._pct = float(value)

    @property
    def epoch_size(self) -> int:
        """Samples per epoch over all ranks before padding (fine-only under a coarse boost)."""
        boosted = getattr(self.dataset, "boost_classes", None) and self._pct > 0
        return getattr(self.dataset, "num_primary", self.n) if boosted else self.n

    @property
    def num_samples(self) -> int:
        """Samples per rank and epoch."""
        return math.ceil(self.epoch_size / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_index = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)

    def __iter__(self) -> Iterator[Key]:
        """This rank's rest of the epoch, fixed when the iteration starts (``advance`` does not move it)."""
        plan = self.epoch_plan(self.epoch)
        return iter(plan[self.rank::self.num_replicas][self.start_index:])

    def advance(self, n: int) -> None:
        """Count ``n`` more of this rank's samples of the epoch as consumed (after a training step)."""
        self.start_index = min(self.start_index + n, self.num_samples)

    # -- centroids -------------------------------------------------------
    def centroids_by_class(self) -> list[np.ndarray]:
        """Per class an ``(M, 3)`` int64 array of ``(index, x, y)``; built once, cached on disk."""
        if self._by_class is None:
            self._by_class = _load_centroids(self.dataset, self.class_uniform_tile, self.cache_dir,
                                             self.workers)
        return self._by_class

    # -- the plan ----------------------------------------------------------
    def epoch_plan(self, epoch: int) -> list[Key]:
        """All ranks' samples of ``epoch`` (length ``num_samples * num_replicas``)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.epoch_size
        by_class = self.centroids_by_class() if self._pct > 0 else []
        present = [c for c, arr in enumerate(by_class) if len(arr)]
        n_cu = round(n * self._pct) if present else 0
        if not self.shuffle and n_cu == 0:
            plan: list[Key] = list(range(n))
        else:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            plan = [int(i) for i in order[: n - n_cu]]
            plan += _class_uniform(rng, by_class, present, n_cu)
            if self.shuffle:
                plan = [plan[i] for i in rng.permutation(len(plan))]
        total = self.num_samples * self.num_replicas
        while len(plan) < total:  # pad by repeating, as DistributedSampler does
            plan += plan[: total - len(plan)]
        return plan

    # -- checkpointing -------------------------------------------------------
    def state_dict(self) -> dict:
        """``consumed``: this rank's samples of ``epoch`` already consumed (``start_index``)."""
        return {"epoch": self.epoch, "consumed": self.start_index, "seed": self.seed,
                "class_uniform_pct": self._pct, "num_replicas": self.num_replicas, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch, position and seed (``start_index`` is read as ``consumed`` too).

        World-size policy (docs/INTERFACES.md): a different ``num_replicas`` keeps the global
        position, rounded down to a multiple of the new world size.
        """
        if state.get("n", self.n) != self.n:
            raise ValueError(f"sampler state is for a dataset of {state['n']} items, this one has {self.n}")
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
        self.class_uniform_pct = float(state.get("class_uniform_pct", self._pct))
        mine = int(state.get("start_index", state.get("consumed", 0)))
        consumed = mine * int(state.get("num_replicas", self.num_replicas))
        self.start_index = min(consumed // self.num_replicas, self.num_samples)


def _class_uniform(rng: np.random.Generator, by_class: list[np.ndarray], present: list[int],
                   n_cu: int) -> list[Key]:
    if n_cu == 0:
        return []
    per_class = np.full(len(present), n_cu // len(present))
    per_class[rng.choice(len(present), n_cu % len(present), replace=False)] += 1
    out: list[Key] = []
    for c, k in zip(present, per_class.tolist(), strict=True):
        cents = by_class[c]
        if k == 0:
            continue
        order = np.concatenate([rng.permutation(len(cents)) for _ in range(-(-k // len(cents)))])[:k]
        out += [(int(i), (int(x), int(y))) for i, x, y in cents[order]]
    return out


def _load_centroids(dataset, tile: int, cache_dir: Path | None, workers: int | None) -> list[np.ndarray]:
    from datasets.centroids import CacheSpec, cache_file, default_cache_dir, load_or_build

    paths = getattr(dataset, "label_paths", None)
    if paths is None or any(p is None for p in paths):
        raise DatasetError(f"class-uniform sampling needs a labelled dataset; {dataset!r} has images "
                           f"without labels: set class_uniform_pct=0")
    spec = CacheSpec(tile, dataset.num_classes, getattr(dataset, "label_lut", None),
                     getattr(dataset, "centroid_fn", None))
    path = cache_file(cache_dir or default_cache_dir(), getattr(dataset, "name", "dataset"),
                      getattr(dataset, "root", Path(paths[0]).parent), spec)
    per_file, report = load_or_build([str(p) for p in paths], spec, path, workers=workers)
    if report.computed:
        log.info("centroids: computed %d label files, cache %s", report.computed, path)
    rows = [np.column_stack([np.full(len(c), i), c]) for i, c in enumerate(per_file) if len(c)]
    table = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)
    # table columns: index, class, x, y
    boost = getattr(dataset, "boost_classes", None)
    if boost:  # extra (coarse) items contribute only the boosted classes
        extra = table[:, 0] >= getattr(dataset, "num_primary", len(paths))
        table = table[~extra | np.isin(table[:, 1], boost)]
    return [table[table[:, 1] == c][:, [0, 2, 3]] for c in range(dataset.num_classes)]
