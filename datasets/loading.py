"""Loader glue that makes a run reproducible and resumable mid-epoch.

- :class:`ResumableSampler` wraps the dataset's sampler: it skips the samples this rank
  already consumed in the epoch (after a resume) and yields ``(epoch, key)``.
- :class:`SeededDataset` seeds Python, NumPy and torch from ``(seed, epoch, key)`` before
  each sample's augmentation, so a sample's crop/flip/jitter do not depend on which worker
  loads it, on the number of workers or ranks, or on where the run was interrupted.
"""

from __future__ import annotations

import hashlib
import itertools
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


class ResumableSampler(Sampler):
    def __init__(self, inner: Sampler):
        self.inner = inner
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        for key in itertools.islice(iter(self.inner), self.start, None):
            yield self.epoch, key

    def __len__(self) -> int:
        return max(len(self.inner) - self.start, 0)


class SeededDataset(Dataset):
    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, Any]) -> Any:
        epoch, key = item
        in_main = torch.utils.data.get_worker_info() is None
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if in_main else None
        seed_cpu(mix_seed(self.seed, epoch, _plain(key)))  # augmentation draws on the CPU streams
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
