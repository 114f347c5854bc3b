"""The reference train.py's flags that this project does not accept, each with what replaces it,
and the reference flags that are accepted but resolve into others (stdlib only: config.py
imports it).

A reference command line with one of these stops with one line that names the replacement,
instead of "unknown flag".
"""

from __future__ import annotations

from typing import Any

_ARCH = ("an architecture-search leftover of the reference: the attention head here is the paper's final one; "
         "pick a model with --arch (python -c 'import network; print(network.list_models())')")
_RELAX = "boundary label relaxation is not implemented: use --rmi_loss (the paper's loss) or --img_wt_loss"
_RESTART = "warm restarts are not implemented: the schedule is poly over --max_epoch/--max_iter with --poly_exp"
_SCALES = "use --n_scales 0.5,1.0,2.0, or --multi_scale_inference with --extra_scales"

REFUSED: dict[str, str] = {
    "dataset_inst": "internal to the reference; nothing to pass",
    "batch_weighting": "batch class weighting is not implemented: use --img_wt_loss (per-image) or --rmi_loss",
    "jointwtborder": _RELAX, "strict_bdr_cls": _RELAX, "rlx_off_epoch": _RELAX,
    "rescale": _RESTART, "repoly": _RESTART, "poly_step": _RESTART,
    "global_rank": "torchrun/Slurm set RANK; nothing to pass",
    "hardnm": "hard negative mining is not implemented: use --class_uniform_pct for rare classes",
    "bblur": "use --gblur (Gaussian blur) and --color_aug", "brt_aug": "use --color_aug (brightness included)",
    "rand_augment": "RandAugment is not implemented: use --color_aug and --gblur",
    "exp": "the run directory is --result_dir (runx passes LOGDIR)",
    "dump_augmentation_images": "not implemented: --dump_assets writes the evaluation pictures",
    "wt_bound": "HRNet-OCR's losses do not use it: see --ocr_alpha and --supervised_mscale_loss_wt",
    "maxSkip": "video frame skipping (SDCNet augmentation) is not implemented; drop it",
    "scf": "scale correction is not used by HRNet-OCR; drop it",
    "full_crop_training": "use --crop_size H,W equal to the image size",
    "log_msinf_to_tb": "multi-scale evaluation always goes to TensorBoard (val/*); drop it",
    "three_scale": _SCALES, "alt_two_scale": _SCALES,
    "translate_aug_fix": "the augmentation here has no translation offset to fix; drop it",
    "init_decoder": "the heads use their default initialisation; drop it",
    "dump_topn_all": "use --dump_topn N (the N worst images by mIoU)",
    "only_coarse": "training on coarse labels only is not implemented: use --coarse_boost_classes",
    "map_crop_val": "use --pre_size to bound Mapillary's validation image size",
    "trial": "runx's trial index is not needed: each run has its own --result_dir",
    "set_cityscapes_root": "use --dataset_root or $CITYSCAPES_ROOT",
    "summary": "use python bench/model_speed.py for the model's size and speed",
    **{k: _ARCH for k in ("ocr_aspp", "aspp_bot_ch", "mscale_cat_scale_flt", "mscale_dropout", "mscale_no3x3",
                          "mscale_old_arch", "mscale_init", "attnscale_bn_head", "segattn_bot_ch")},
}
SHORT_ALIASES = {"-wb": "wt_bound"}

TEST_MODE_ITERS = 12  # the reference: a few iterations and a few validation batches
TEST_MODE_VAL_BATCHES = 12


def refused_message(token: str) -> str | None:
    """``--jointwtborder`` -> "--jointwtborder (reference flag) is not supported: <replacement>"."""
    flag = token.split("=", 1)[0]
    name = SHORT_ALIASES.get(flag) or (flag[2:] if flag.startswith("--") else None)
    if name not in REFUSED:
        return None
    return f"{flag} (a reference flag) is not supported: {REFUSED[name]}"


def resolve(cfg: Any) -> None:
    """Turn accepted reference flags into the settings they mean (in place, idempotent):
    ``--multi_scale_inference`` -> ``--n_scales`` {default_scale} + ``--extra_scales`` unless
    ``--n_scales`` is given; ``--test_mode`` -> 2 epochs of at most TEST_MODE_ITERS steps."""
    e, t = cfg.eval, cfg.train
    if e.multi_scale_inference and e.n_scales is None:
        e.n_scales = tuple(sorted({float(e.default_scale), *(float(s) for s in e.extra_scales)}))
    if t.test_mode:
        t.max_epoch = min(t.max_epoch, 2)
        t.max_iter = min(t.max_iter or TEST_MODE_ITERS, TEST_MODE_ITERS)


def check(cfg: Any) -> str | None:
    """The first combination of reference flags that cannot work, as a one-line message."""
    e, t = cfg.eval, cfg.train
    if t.restore_net and not cfg.model.snapshot:
        return "--restore_net loads the weights of --snapshot: give --snapshot (or drop --restore_net)"
    if t.restore_optimizer and not cfg.model.snapshot:
        return ("--restore_optimizer restores the optimizer state of a --snapshot written by train.py: give "
                "--snapshot (to resume everything, use --resume)")
    if (e.dump_for_submission or e.dump_for_auto_labelling) and e.eval not in ("val", "test", "trn"):
        return "--dump_for_submission/--dump_for_auto_labelling write evaluation outputs: add --eval val or --eval test"
    if e.dump_for_submission and cfg.data.dataset not in ("cityscapes", "synthetic"):
        return "--dump_for_submission writes Cityscapes labelIds PNGs: use --dataset cityscapes"
    if e.dump_topn < 0:
        return f"--dump_topn must be >= 0, got {e.dump_topn}"
    if t.start_epoch < 0 or (t.start_epoch and t.resume):
        return "--start_epoch must be >= 0 and cannot be combined with --resume (the checkpoint has the epoch)"
    return None
