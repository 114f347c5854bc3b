"""Augmentations keep image and mask aligned; padding, centroid crops, eval resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.transforms import MEAN, STD, ColorJitter, build_eval_transform, build_train_transform


def _pattern(h=60, w=90, block=10, seed=0):
    """Blocks of random classes; the image encodes the class in every channel (class * 12)."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 19, (h // block, w // block)), np.ones((block, block), int)).astype(np.uint8)
    image = np.repeat((mask * 12)[..., None], 3, axis=2).astype(np.uint8)
    return image, mask


def _decode(image_t: torch.Tensor) -> np.ndarray:
    """Back from normalised tensor to the class each pixel's colour encodes."""
    rgb = image_t.numpy().transpose(1, 2, 0) * STD + MEAN
    return np.rint(rgb[..., 0] * 255.0 / 12.0).astype(int)


@pytest.mark.parametrize("seed", range(6))
def test_crop_pad_flip_keep_alignment_exactly(seed):
    torch.manual_seed(seed)
    image, mask = _pattern()
    t = build_train_transform((64, 100), scale_min=1.0, scale_max=1.0, color_aug=0.0)  # pad + crop + flip
    img_t, mask_t = t(image, mask)
    assert img_t.shape == (3, 64, 100) and mask_t.shape == (64, 100)
    m = mask_t.numpy()
    decoded = _decode(img_t)
    valid = m != 255
    np.testing.assert_array_equal(decoded[valid], m[valid])
    assert (~valid).sum() == 64 * 100 - 60 * 90  # padding is ignore, exactly the padded area
    np.testing.assert_array_equal(decoded[~valid], 0)  # padded image is black


@pytest.mark.parametrize("seed", range(4))
def test_scaling_keeps_alignment_away_from_edges(seed):
    torch.manual_seed(seed)
    image, mask = _pattern(120, 160, block=20, seed=seed)
    t = build_train_transform(64, scale_min=0.5, scale_max=2.0, color_aug=0.0)
    img_t, mask_t = t(image, mask)
    m, decoded = mask_t.numpy(), _decode(img_t)
    valid = m != 255
    assert (decoded[valid] == m[valid]).mean() > 0.9  # disagreement only on block borders
    assert set(np.unique(m[valid])) <= set(np.unique(mask))  # nearest: no invented classes


def test_flip_happens_and_is_joint():
    image, mask = _pattern(20, 40, block=10)
    t = build_train_transform((20, 40), scale_min=1.0, scale_max=1.0, color_aug=0.0)
    flipped = 0
    for s in range(12):
        torch.manual_seed(s)
        img_t, mask_t = t(image, mask)
        np.testing.assert_array_equal(_decode(img_t), mask_t.numpy())
        flipped += bool((mask_t.numpy() == mask[:, ::-1]).all() and not (mask == mask[:, ::-1]).all())
    assert 0 < flipped < 12


def test_centroid_is_inside_the_crop():
    h, w = 200, 300
    mask = np.zeros((h, w), np.uint8)
    image = np.zeros((h, w, 3), np.uint8)
    for s in range(30):
        torch.manual_seed(s)
        cx, cy = int(np.random.default_rng(s).integers(0, w)), int(np.random.default_rng(s + 99).integers(0, h))
        m = mask.copy()
        m[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2] = 7  # a tiny rare object at the centroid
        t = build_train_transform(48, scale_min=0.5, scale_max=1.5, color_aug=0.0)
        _, mask_t = t(image, m, centroid=(cx, cy))
        assert (mask_t == 7).any(), f"object at {(cx, cy)} not in the crop (seed {s})"


def test_color_jitter_and_blur_change_image_not_mask():
    torch.manual_seed(0)
    image, mask = _pattern(40, 40)
    plain = build_train_transform(40, 1.0, 1.0, color_aug=0.0)
    aug = build_train_transform(40, 1.0, 1.0, color_aug=0.4, gblur=True)
    torch.manual_seed(1)
    a_img, a_mask = plain(image, mask)
    torch.manual_seed(1)
    b_img, b_mask = aug(image, mask)
    assert torch.equal(a_mask, b_mask)
    assert not torch.allclose(a_img, b_img)


def test_color_jitter_ranges():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    torch.manual_seed(0)
    assert np.array_equal(ColorJitter(0, 0, 0, 0)(img), img)
    out = ColorJitter(0.25, 0.25, 0.25, 0.25)(img)
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)


def test_same_torch_seed_same_augmentation():
    image, mask = _pattern()
    t = build_train_transform(32, color_aug=0.25, gblur=True)
    torch.manual_seed(5)
    a = t(image, mask)
    torch.manual_seed(5)
    b = t(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_transform_pre_size_and_no_mask():
    image, mask = _pattern(30, 60)
    img_t, mask_t = build_eval_transform(pre_size=120)(image, mask)
    assert img_t.shape == (3, 60, 120) and mask_t.shape == (60, 120)
    assert set(np.unique(mask_t.numpy())) <= set(np.unique(mask))
    img_t, mask_t = build_eval_transform()(image, None)
    assert img_t.shape == (3, 30, 60) and mask_t is None


def test_bad_scale_range():
    with pytest.raises(ValueError, match="scale_min"):
        build_train_transform(32, scale_min=2.0, scale_max=1.0)
