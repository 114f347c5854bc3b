"""Losses: ignore_index handling, RMI against an independent float64 numpy computation,
image weighting, the combined SegLoss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loss import CrossEntropyLoss2d, ImageBasedCrossEntropyLoss2d, RMILoss, SegLoss

C = 4


def _case(seed: int = 0, n: int = 2, h: int = 16, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, h, w, generator=g) * 2
    target = torch.randint(0, C, (n, h, w), generator=g)
    target[:, :3, :5] = 255
    target[0, -1] = 255
    return logits, target


# --- an independent float64 implementation of RMI (Zhao et al.), written from the formula ---

def _np_avg_pool(x: np.ndarray, k: int) -> np.ndarray:
    """k x k average pool, stride k, zero padding k//2, padded zeros counted in the mean."""
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (xp.shape[2] - k) // k + 1, (xp.shape[3] - k) // k + 1
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = xp[:, :, i * k:i * k + k, j * k:j * k + k].mean(axis=(2, 3))
    return out


def _np_rmi(logits: np.ndarray, target: np.ndarray, radius: int = 3, pool: int = 4) -> float:
    n, c, h, w = logits.shape
    valid = target < c
    onehot = np.zeros((n, c, h, w))
    for k in range(c):
        onehot[:, k] = (target == k) & valid
    mask = valid[:, None].astype(np.float64)
    # BCE with logits, summed over valid pixels and classes, / (valid + 1)
    bce = (np.maximum(logits, 0) - logits * onehot + np.log1p(np.exp(-np.abs(logits)))) * mask
    bce = bce.sum() / (valid.sum() + 1.0)
    probs = 1 / (1 + np.exp(-logits)) * mask + 1e-6
    la, pr = _np_avg_pool(onehot, pool), _np_avg_pool(probs, pool)
    d = radius * radius
    hh, ww = la.shape[2] - radius + 1, la.shape[3] - radius + 1
    total = 0.0
    for k in range(c):
        per_image = []
        for i in range(n):
            y = np.stack([la[i, k, a:a + hh, b:b + ww].ravel() for a in range(radius) for b in range(radius)])
            p = np.stack([pr[i, k, a:a + hh, b:b + ww].ravel() for a in range(radius) for b in range(radius)])
            y = y - y.mean(axis=1, keepdims=True)
            p = p - p.mean(axis=1, keepdims=True)
            var_y = y @ y.T
            cov_yp = y @ p.T
            var_p = p @ p.T + 5e-4 * np.eye(d)
            cond = var_y - cov_yp @ np.linalg.inv(var_p) @ cov_yp.T + 5e-4 * np.eye(d)
            chol = np.linalg.cholesky(cond)
            per_image.append(0.5 * 2 * np.log(np.diag(chol) + 1e-8).sum())
        total += np.mean(per_image) / d
    return 0.5 * bce + 0.5 * total


def test_rmi_matches_independent_float64_computation():
    logits, target = _case(h=24, w=28)
    want = _np_rmi(logits.double().numpy(), target.numpy())
    got = RMILoss(C)(logits, target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_rmi_bce_part_only_without_do_rmi():
    logits, target = _case()
    valid = target != 255
    onehot = F.one_hot(target * valid, C).permute(0, 3, 1, 2).float()
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none") * valid[:, None]
    want = bce.sum() / (valid.sum() + 1)
    torch.testing.assert_close(RMILoss(C)(logits, target, do_rmi=False), want)


def test_rmi_stays_float32_under_autocast():
    logits, target = _case()
    want = RMILoss(C)(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = RMILoss(C)(logits.bfloat16(), target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=2e-2)


def test_cross_entropy_matches_manual_mean_over_valid_pixels():
    logits, target = _case()
    valid = target != 255
    logp = F.log_softmax(logits, dim=1)
    picked = logp.gather(1, (target * valid).unsqueeze(1)).squeeze(1)
    want = -(picked * valid).sum() / valid.sum()
    torch.testing.assert_close(CrossEntropyLoss2d()(logits, target), want)
    all_ignored = torch.full_like(target, 255)
    assert CrossEntropyLoss2d()(logits, all_ignored).item() == 0.0


def test_image_weighted_cross_entropy_weights_and_sum_over_images():
    logits, target = _case()
    crit = ImageBasedCrossEntropyLoss2d(C, upper_bound=1.0)
    counts = torch.tensor([(target == k).sum().item() for k in range(C)], dtype=torch.float32)
    freq = counts / counts.sum()
    weights = (counts > 0).float() * (1 - freq) + 1
    torch.testing.assert_close(crit.class_weights(target), weights)
    want = sum(F.cross_entropy(logits[i:i + 1], target[i:i + 1], weight=weights, ignore_index=255)
               for i in range(2))
    torch.testing.assert_close(crit(logits, target), want)


@pytest.mark.parametrize("make", [
    lambda: CrossEntropyLoss2d(),
    lambda: ImageBasedCrossEntropyLoss2d(C),
    lambda: RMILoss(C),
    lambda: SegLoss(C, rmi=True, mscale_weight=0.1),
])
def test_ignored_pixels_do_not_contribute(make):
    crit = make()
    logits, target = _case()
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    other = torch.where(ignored, torch.randn_like(logits) * 10, logits)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clone().requires_grad_(True)
        if isinstance(crit, SegLoss):
            value = crit({"pred": x, "aux": x * 0.5, "pred_lo": x * 2, "pred_hi": x + 1}, target)
        else:
            value = crit(x, target)
        value.backward()
        return value.detach(), x.grad

    v1, g1 = run(logits)
    v2, _ = run(other)
    torch.testing.assert_close(v1, v2)
    assert g1[ignored].abs().max() == 0
    assert g1[~ignored].abs().max() > 0


def test_segloss_combines_terms_like_the_reference():
    logits, target = _case()
    g = torch.Generator().manual_seed(5)
    out = {k: torch.randn(logits.shape, generator=g) for k in ("pred", "aux", "pred_lo", "pred_hi")}
    rmi = RMILoss(C)
    want = (rmi(out["pred"], target) + 0.4 * rmi(out["aux"], target, do_rmi=False)
            + 0.05 * rmi(out["pred_lo"], target, do_rmi=False) + 0.05 * rmi(out["pred_hi"], target, do_rmi=False))
    torch.testing.assert_close(SegLoss(C, rmi=True, mscale_weight=0.05)(out, target), want)
    want_aux_rmi = rmi(out["pred"], target) + 0.4 * rmi(out["aux"], target)
    torch.testing.assert_close(SegLoss(C, rmi=True, ocr_aux_rmi=True)(out, target), want_aux_rmi)
    ce = CrossEntropyLoss2d()
    torch.testing.assert_close(SegLoss(C)(out, target), ce(out["pred"], target) + 0.4 * ce(out["aux"], target))
    torch.testing.assert_close(SegLoss(C)({"pred": out["pred"]}, target), ce(out["pred"], target))
    with pytest.raises(KeyError, match="pred"):
        SegLoss(C)({"aux": out["aux"]}, target)


def test_rmi_target_encoding_equals_the_one_hot_of_valid_labels():
    _, target = _case()
    enc = RMILoss(C).encode(target)
    valid = target < C
    want = F.one_hot(target * valid, C).permute(0, 3, 1, 2).float() * valid[:, None]
    assert enc.onehot.dtype == torch.float32 and torch.equal(enc.onehot, want)
    assert torch.equal(enc.mask, valid[:, None].float()) and enc.count.item() == valid.sum().item() + 1


def test_segloss_encodes_the_target_once_for_all_terms(monkeypatch):
    """The one-hot map was rebuilt for each of pred, aux, pred_lo, pred_hi (4x the loss's time on the CPU)."""
    logits, target = _case()
    out = {k: (logits + i).requires_grad_() for i, k in enumerate(("pred", "aux", "pred_lo", "pred_hi"))}
    crit = SegLoss(C, rmi=True, mscale_weight=0.5)
    want = crit(out, target)  # the same value whether the target comes encoded or not
    manual = (crit.criterion(out["pred"], target) + 0.4 * crit.criterion(out["aux"], target, do_rmi=False)
              + 0.5 * crit.criterion(out["pred_lo"], target, do_rmi=False)
              + 0.5 * crit.criterion(out["pred_hi"], target, do_rmi=False))
    assert torch.equal(want, manual)
    calls = []
    encode = RMILoss.encode
    monkeypatch.setattr(RMILoss, "encode", lambda self, t: calls.append(1) or encode(self, t))
    crit(out, target).backward()
    assert len(calls) == 1
