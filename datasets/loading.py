"""Loader glue that makes a run reproducible and resumable mid-epoch.

- :class:`SeededDataset` seeds Python, NumPy and torch from ``(seed, epoch, key)`` before
  each sample's augmentation, so a sample's crop/flip/jitter do not depend on which worker
  loads it, on the number of workers or ranks, or on where the run was interrupted. The
  position inside an epoch is the sampler's (``datasets.sampler.ClassUniformSampler``).
- :class:`ShardSampler`: evaluation shards.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable values (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_all(seed: int) -> None:
    seed_cpu(seed)
    torch.manual_seed(seed)  # also every CUDA generator


def seed_cpu(seed: int) -> None:
    """Seed Python, NumPy and torch's CPU generator only (CUDA streams, e.g. dropout, untouched)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


class SeededDataset(Dataset):
    """``dataset[key]`` with its augmentation seeded from ``(seed, epoch, key)``.

    Call :meth:`set_epoch` before iterating a DataLoader over it: workers copy the dataset
    when an iteration starts (``persistent_workers`` must stay off).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        in_main = torch.utils.data.get_worker_info() is None
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if in_main else None
        seed_cpu(mix_seed(self.seed, self.epoch, _plain(key)))  # augmentation draws on the CPU streams
        try:
            return self.dataset[key]
        finally:
            if saved is not None:  # leave the main process's RNG streams untouched
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def _plain(key: Any) -> Any:
    if isinstance(key, (tuple, list)):
        return tuple(_plain(k) for k in key)
    if isinstance(key, np.ndarray | torch.Tensor):
        return tuple(key.tolist()) if key.ndim else key.item()
    if isinstance(key, np.generic):
        return key.item()
    return key


class ShardSampler(Sampler):
    """Evaluation: rank ``r`` takes indices ``r, r + world, ...`` (no padding, no duplicates)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
