"""Class-uniform sampling: proportions, determinism, disjoint ranks, resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import build_sampler
from datasets.base import Item, SegmentationDataset

N, RARE = 40, (1, 2, 3)


@pytest.fixture(scope="module")
def rare_ds(tmp_path_factory) -> SegmentationDataset:
    """40 labelled images of class 0; class c in RARE appears as one rectangle in a few images."""
    root = tmp_path_factory.mktemp("rare")
    items = []
    for i in range(N):
        mask = np.zeros((32, 48), np.uint8)
        mask[:4] = 255
        for c in RARE:
            if i % (4 * c) == 0:
                mask[10:20, 10 * c:10 * c + 6] = c
        img, lab = root / f"{i}.png", root / f"{i}_lab.png"
        cv2.imwrite(str(img), np.zeros((32, 48, 3), np.uint8))
        cv2.imwrite(str(lab), mask)
        items.append(Item(img, lab, str(i)))
    return SegmentationDataset(items, num_classes=4, class_names=list("abcd"), palette=np.zeros((4, 3)),
                               label_lut=None, transform=None, root=root, split="train", name="rare")


def _labels(ds, key) -> int:
    i, (x, y) = key
    return int(cv2.imread(str(ds.items[i].label), cv2.IMREAD_UNCHANGED)[y, x])


def test_plain_sampler_is_a_permutation(rare_ds, tmp_path):
    s = build_sampler(rare_ds, class_uniform_pct=0.0, seed=3, cache_dir=tmp_path)
    keys = list(s)
    assert sorted(keys) == list(range(N)) and keys != list(range(N))
    assert list(build_sampler(rare_ds, shuffle=False, cache_dir=tmp_path)) == list(range(N))


def test_class_uniform_proportions_over_an_epoch(rare_ds, tmp_path):
    s = build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, seed=0, cache_dir=tmp_path)
    keys = list(s)
    assert len(keys) == N
    cu = [k for k in keys if isinstance(k, tuple)]
    plain = [k for k in keys if not isinstance(k, tuple)]
    assert len(cu) == 20 and len(set(plain)) == len(plain) == 20
    per_class = Counter(_labels(rare_ds, k) for k in cu)  # each centroid lies on its class here
    assert set(per_class) == {0, 1, 2, 3}
    assert all(v in (5,) for v in per_class.values()), per_class
    # the rare classes are now far above their natural frequency
    rare_images = {i for i in range(N) if i % 12 == 0}
    assert sum(k[0] in rare_images for k in cu) >= 5


def test_deterministic_per_seed_and_epoch(rare_ds, tmp_path):
    a = build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, seed=1, cache_dir=tmp_path)
    b = build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, seed=1, cache_dir=tmp_path)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    c = build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, seed=2, cache_dir=tmp_path)
    assert list(c) != list(b)


@pytest.mark.parametrize("pct", [0.0, 0.3])
def test_ranks_take_disjoint_shares(rare_ds, tmp_path, pct):
    samplers = [build_sampler(rare_ds, class_uniform_pct=pct, class_uniform_tile=16, num_replicas=3,
                              rank=r, seed=7, cache_dir=tmp_path) for r in range(3)]
    for s in samplers:
        s.set_epoch(2)
    shares = [list(s) for s in samplers]
    assert all(len(sh) == len(s) == 14 for sh, s in zip(shares, samplers, strict=True))  # ceil(40 / 3)
    plan = samplers[0].epoch_plan(2)
    interleaved = [shares[j % 3][j // 3] for j in range(42)]
    assert interleaved == plan  # every position of the common plan belongs to exactly one rank
    if pct == 0.0:
        assert set(plan) == set(range(N)) and set(plan[:40]) == set(range(N))


def test_resume_mid_epoch_and_state_dict(rare_ds, tmp_path):
    s = build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, seed=4, cache_dir=tmp_path)
    s.set_epoch(3)
    full = list(s)
    state = dict(s.state_dict(), start_index=15)
    r = build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, seed=0, cache_dir=tmp_path)
    r.load_state_dict(state)
    r.set_epoch(3)  # the trainer's call at the top of the resumed epoch keeps the position
    assert len(r) == N - 15 and list(r) == full[15:]
    r.set_epoch(4)
    assert r.start_index == 0 and len(r) == N
    with pytest.raises(ValueError, match="items"):
        r.load_state_dict(dict(state, n=N + 1))


def test_class_uniform_pct_is_mutable(rare_ds, tmp_path):
    s = build_sampler(rare_ds, class_uniform_pct=0.0, class_uniform_tile=16, cache_dir=tmp_path)
    assert not any(isinstance(k, tuple) for k in s)
    s.class_uniform_pct = 1.0
    assert all(isinstance(k, tuple) for k in s)
    with pytest.raises(ValueError):
        s.class_uniform_pct = 1.5


def test_cache_lands_in_cache_dir_and_is_reused(rare_ds, tmp_path):
    build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, cache_dir=tmp_path / "c")
    files = list(Path(tmp_path / "c").glob("rare_tile16_*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    build_sampler(rare_ds, class_uniform_pct=0.5, class_uniform_tile=16, cache_dir=tmp_path / "c")
    assert files[0].stat().st_mtime_ns == mtime
