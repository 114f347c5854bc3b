"""Datasets, augmentation and class-uniform sampling.

    from datasets import build_dataset, build_sampler, DatasetError, list_datasets, dataset_info
    ds = build_dataset("synthetic", split="train", transform=build_train_transform(128))
    dataset_info("synthetic").class_names   # class table, root variable (datasets/info.py)
"""

from __future__ import annotations

import os
from collections.abc import Callable

from datasets.errors import DatasetConfigError, DatasetError, UnknownDatasetError
from datasets.info import ClassInfo, DatasetInfo, dataset_info, info_for_checkpoint, register_info
from datasets.spec import load_spec  # also registers the class table of "custom" (dataset.yaml)

__all__ = ["ClassInfo", "DatasetConfigError", "DatasetError", "DatasetInfo", "build_dataset", "build_sampler",
           "dataset_info", "info_for_checkpoint", "list_datasets", "register_dataset", "register_info"]

_BUILDERS: dict[str, Callable] = {}


def register_dataset(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(root, split, cv, transform, **options)`` under ``name``."""

    def wrap(fn: Callable) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    return sorted(_BUILDERS)


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", cv: int = 0,
                  transform: Callable | None = None, **options):
    """Build dataset ``name``; ``root`` defaults to the dataset's environment variable."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}: pass --dataset with one of "
                                  f"{', '.join(list_datasets())} (your own data: --dataset custom "
                                  "--dataset_root DIR)") from None
    return builder(root=root, split=split, cv=cv, transform=transform, **options)


@register_dataset("cityscapes")
def _cityscapes(root, split, cv, transform, **options):
    from datasets.cityscapes import Cityscapes

    return Cityscapes(root, split=split, cv=cv, transform=transform, **options)


@register_dataset("mapillary")
def _mapillary(root, split, cv, transform, **options):
    from datasets.mapillary import Mapillary

    if cv != 0:
        raise DatasetError(f"Mapillary has no cross-validation splits; got cv={cv}, use cv=0")
    return Mapillary(root, split=split, transform=transform, **options)


@register_dataset("synthetic")
def _synthetic(root, split, cv, transform, **options):
    """The generated street scenes; written under ``root`` on first use (file-locked)."""
    from datasets.cityscapes import Cityscapes
    from datasets.synthetic import ensure

    gen_keys = {"num_train", "num_val", "size", "seed"}
    gen = {k: options.pop(k) for k in list(options) if k in gen_keys}
    root = ensure(root, **gen)
    return Cityscapes(root, split=split, cv=cv, transform=transform, name="synthetic", **options)


@register_dataset("folder")
def _folder(root, split, cv, transform, **options):
    """Every image under ``root`` (inference; no labels)."""
    from datasets.folder import FolderDataset

    if root is None:
        raise DatasetError("the folder dataset needs root=<directory of images>")
    return FolderDataset(root, split=split, cv=cv, transform=transform, **options)


@register_dataset("custom")
def _custom(root, split, cv, transform, config=None, **options):
    """Described by ``root/dataset.yaml`` (or ``config=FILE``): see datasets/spec.py. A
    :class:`~datasets.custom.CustomDataset` or, for rasters, a :class:`~datasets.raster_pairs.RasterDataset`."""
    from datasets.custom import CustomDataset

    if cv != 0:
        raise DatasetConfigError(f"--cv {cv}: custom datasets have no cross-validation folds; use splits")
    if options:
        raise DatasetConfigError(f"options {sorted(options)} do not apply to custom datasets")
    spec = load_spec(root, config)
    if spec.raster is not None:
        from datasets.raster_pairs import RasterDataset

        return RasterDataset(spec, split=split, transform=transform)
    return CustomDataset(spec, split=split, transform=transform)


def build_sampler(dataset, class_uniform_pct: float = 0.0, class_uniform_tile: int = 1024,
                  num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                  cache_dir: str | os.PathLike | None = None):
    """The training/eval sampler (see :class:`datasets.sampler.ClassUniformSampler`)."""
    from datasets.sampler import ClassUniformSampler

    return ClassUniformSampler(dataset, class_uniform_pct=class_uniform_pct,
                               class_uniform_tile=class_uniform_tile, num_replicas=num_replicas,
                               rank=rank, seed=seed, shuffle=shuffle, cache_dir=cache_dir)
