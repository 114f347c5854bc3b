"""The command line, parsed into typed, validated, nested dataclasses.

The reference's flags (``--arch``, ``--n_scales 0.5,1.0,2.0``, ``--crop_size 1024,2048``,
``--amp_opt_level O3`` ...) stay accepted because runx writes them. Each dataclass field *is*
a flag: its name is the flag name, its type decides how the string is parsed, and comma lists
become tuples here, at the boundary. Unknown flags and bad values raise :class:`ConfigError`
naming the flag. Nothing here is global: :func:`parse_config` returns a new :class:`Config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from inference import defaults as inference_defaults
from utils import reference_flags
from utils.errors import UserError

AMP_LEVELS = ("O0", "O1", "O2", "O3")
AMP_DTYPES = inference_defaults.PRECISIONS  # auto, fp32, bf16, fp16: the one precision rule's choices
OPTIMIZERS = ("sgd", "adam", "adamw", "radam")
EVAL_MODES = ("val", "trn", "test", "folder")
DEVICES = ("auto", "cpu", "cuda")
MONITOR_METRICS = ("miou", "pixel_acc", "mean_class_acc", "fwiou")  # higher is better
# network's registered architectures (network.list_models(); tests/test_config.py keeps the two equal):
# here without importing torch, so an unknown --arch is refused where it is parsed (python -m sbatch:
# at submission, not after the queue wait)
ARCHS = ("ocrnet.HRNet", "ocrnet.HRNet_Mscale", "ocrnet.HRNet_Mscale_w18", "ocrnet.HRNet_Mscale_w18s",
         "ocrnet.HRNet_w18", "ocrnet.HRNet_w18s")
# families of names resolved when the model is built (network.list_families(); the timm model name
# itself is checked then, with close matches): prefix -> documented pattern
ARCH_FAMILIES = {"ocrnet.timm.": "ocrnet.timm.<timm_name>[_fuse<P>][_Mscale]"}


T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A flag is unknown or has a bad value; the message names the flag."""


def flag(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field that carries its command-line help (no default: a required flag).

    ``meta``: ``choices``; ``flag`` (the flag's name when it differs from the field's);
    ``aliases`` (more flag names); ``negate`` (a bool defaulting to True, switched off by
    ``--no_<name>``); ``required`` (required on the command line despite a default); ``check``
    (``value -> problem | None``: a value the program would refuse later is refused while parsing,
    so ``python -m sbatch`` refuses it at submission).
    :func:`add_arguments` turns such fields into argparse arguments.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("use immutable defaults")
    if not help:
        raise TypeError("every flag needs its help text")
    return field(default=default, metadata={"help": help, **meta})


_f = flag  # the short name the config sections use


def known_arch(name: str) -> str | None:
    """``check=`` for ``--arch``: a registered architecture (:data:`ARCHS`) or a name of a family
    (:data:`ARCH_FAMILIES`: its prefix and a non-empty rest)."""
    if name in ARCHS or any(name.startswith(p) and len(name) > len(p) for p in ARCH_FAMILIES):
        return None
    close = difflib.get_close_matches(name, ARCHS, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown architecture {name!r}: {hint}known: {', '.join((*ARCHS, *ARCH_FAMILIES.values()))}"


def positive(value: Any) -> str | None:
    """``check=`` for numbers (or each of a tuple's) that must be > 0."""
    values = value if isinstance(value, tuple) else (value,)
    return None if all(v > 0 for v in values) else f"must be > 0, got {_shown(value)}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def fraction(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"must be in [0, 1], got {value}"


def rgb_triple(value: tuple[float, ...]) -> str | None:
    """``check=`` for photo mean/std: three numbers (RGB, 0..1 scale)."""
    return None if len(value) == 3 else f"needs three numbers (RGB, 0..1 scale), got {len(value)}: {_shown(value)}"


@dataclass
class ModelConfig:
    arch: str = _f("ocrnet.HRNet_Mscale", "architecture, by its reference name", check=known_arch)
    trunk: str = _f("hrnetv2", "recorded only: the trunk is fixed by --arch")
    trunk_weights: str | None = _f(None, "ImageNet trunk weights (local file): HRNet's, or the timm model's own "
                                   "checkpoint (.pth/.safetensors) for ocrnet.timm.* architectures")
    trunk_weights_partial: bool = _f(False, "load the --trunk_weights tensors that fit and report the share "
                                     "(default: any misfit is refused)")
    snapshot: str | None = _f(None, "weights to start from (may contain ASSETS_PATH)")
    snapshot_partial: bool = _f(False, "training: load only the --snapshot tensors whose name and shape fit")
    trust_checkpoint: bool = _f(False, "unpickle checkpoints fully (runs code from the file; trusted files only)")
    assets_path: str | None = _f(None, "replaces ASSETS_PATH in paths (default: $ASSETS_PATH)")
    syncbn: bool = _f(False, "convert BatchNorm to SyncBatchNorm (GPU backends only)")
    mscale_lo_scale: float = _f(0.5, "low-resolution scale of the two-scale training forward")
    align_corners: bool = _f(False, "align_corners for the model's interpolations")


@dataclass
class DataConfig:
    dataset: str = _f("cityscapes", "cityscapes, mapillary, synthetic, custom (described by dataset.yaml)")
    dataset_root: str | None = _f(None, "dataset root (default: $CITYSCAPES_ROOT etc.)")
    dataset_config: str | None = _f(None, "--dataset custom: its dataset.yaml (default: <dataset_root>/dataset.yaml)")
    cv: int = _f(0, "cross-validation split")
    crop_size: tuple[int, ...] = _f((896, 896), "training crop: S or H,W")
    pre_size: int | None = _f(None, "resize long edge to this before augmentation / eval")
    scale_min: float = _f(0.5, "random scale lower bound")
    scale_max: float = _f(2.0, "random scale upper bound")
    color_aug: float = _f(0.25, "colour jitter strength")
    gblur: bool = _f(False, "Gaussian blur augmentation")
    class_uniform_pct: float = _f(0.5, "fraction of each epoch drawn class-uniformly")
    class_uniform_tile: int = _f(1024, "tile size for class-uniform centroids")
    coarse_boost_classes: tuple[int, ...] | None = _f(None, "classes boosted with coarse data")
    custom_coarse_dropout_classes: tuple[int, ...] | None = _f(None, "coarse classes to drop")
    custom_coarse_prob: float | None = _f(None, "probability of coarse samples")
    mask_out_cityscapes: bool = _f(False, "mask out Cityscapes pixels in coarse data")
    centroid_cache: str | None = _f(None, "directory of the class-uniform centroid cache")
    bs_trn: int = _f(2, "training batch size per process")
    bs_val: int = _f(1, "evaluation batch size per process")
    num_workers: int = _f(4, "data loader workers per process")


@dataclass
class LossConfig:
    rmi_loss: bool = _f(False, "RMI loss instead of cross-entropy")
    img_wt_loss: bool = _f(False, "per-image class-weighted cross-entropy")
    supervised_mscale_loss_wt: float | None = _f(None, "weight of the per-scale losses")
    ocr_alpha: float = _f(0.4, "weight of the OCR auxiliary loss")
    ocr_aux_loss_rmi: bool = _f(False, "RMI for the OCR auxiliary loss")


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "sgd, adam, adamw, radam", choices=OPTIMIZERS)
    lr: float = _f(0.002, "base learning rate")
    momentum: float = _f(0.9, "SGD momentum / Adam beta1")
    weight_decay: float = _f(1e-4, "weight decay")
    amsgrad: bool = _f(False, "AMSGrad variant for adam/adamw")
    lr_schedule: str = _f("poly", "only poly", choices=("poly",))
    poly_exp: float = _f(1.0, "exponent of the per-iteration poly schedule")


@dataclass
class TrainConfig:
    result_dir: str = _f("./logs/default", "run directory (runx passes LOGDIR)")
    max_epoch: int = _f(180, "epochs")
    max_cu_epoch: int = _f(150, "class-uniform sampling stops at this epoch")
    max_iter: int | None = _f(None, "stop after this many optimizer steps (poly horizon)")
    val_freq: int = _f(1, "validate every N epochs")
    ckpt_freq: int = _f(200, "write last.pth every N optimizer steps (0: epoch ends only)")
    resume: str | None = _f(None, "resume training from this checkpoint")
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "reproducible run; resume gives the same weights")
    amp_opt_level: str | None = _f(None, "O0 fp32, O1/O2 autocast, O3 half (BN fp32)",
                                   choices=AMP_LEVELS)
    fp16: bool = _f(False, "mixed precision (native torch.amp; default level O1)")
    apex: bool = _f(False, "accepted for the reference's YAMLs: native AMP/DDP, apex unused")
    amp_dtype: str = _f("auto", "dtype of O1-O3 training and of evaluation; " + inference_defaults.AUTO_HELP
                        + "; a GradScaler only for fp16", choices=AMP_DTYPES)
    no_channels_last: bool = _f(False, "train in NCHW instead of channels_last (the CUDA default)")
    compile: bool = _f(False, "torch.compile the model for training and evaluation (eager if it fails)")
    grad_ckpt: bool = _f(False, "gradient checkpointing of the trunk: less memory, ~30%% more time")
    global_batch_size: int | None = _f(None, "global batch; gradient accumulation fills it")
    device: str = _f("auto", "auto, cpu, cuda", choices=DEVICES)
    local_rank: int = _f(0, "set by torch.distributed.launch; LOCAL_RANK wins", aliases=("--local-rank",))
    log_freq: int = _f(10, "TensorBoard scalars every N steps")
    monitor: str = _f("miou", "validation metric for best.pth, --save_top_k, --early_stop_patience",
                      choices=MONITOR_METRICS)
    save_top_k: int = _f(1, "keep the K best checkpoints by --monitor in checkpoints/ (1: best.pth only)")
    early_stop_patience: int | None = _f(None, "stop after N validations without --monitor improving")
    freeze_trunk: bool = _f(False, "train the heads only: the trunk's weights get no gradient")
    restore_net: bool = _f(False, "load --snapshot's weights (the reference's spelling; --snapshot does it)")
    restore_optimizer: bool = _f(False, "also restore the optimizer state of a --snapshot written by train.py")
    start_epoch: int = _f(0, "start at this epoch: the poly schedule and epoch counter begin there")
    test_mode: bool = _f(False, "smoke test: 2 epochs of a few steps, a few validation batches")
    debug: bool = _f(False, "print the traceback of user errors too (also HMSA_DEBUG=1)")


@dataclass
class EvalConfig:
    eval: str | None = _f(None, "val, trn, test (Cityscapes test split) or folder: evaluate only",
                          choices=EVAL_MODES)
    eval_folder: str | None = _f(None, "image folder for --eval folder")
    n_scales: tuple[float, ...] | None = _f(None, inference_defaults.SCALES_HELP + " (e.g. 0.5,1.0,2.0)",
                                            check=inference_defaults.scales_problem)
    do_flip: bool = _f(False, "average with horizontally flipped inference")
    dump_assets: bool = _f(False, "also write attention maps per scale")
    dump_all_images: bool = _f(False, "write pictures for every image, not a few")
    dump_num_images: int = _f(8, "pictures written when not --dump_all_images")
    subdirs: str | None = _f(None, "--eval folder: top-level subdirectories, e.g. 939-986")
    shard: str | None = _f(None, "--eval folder: INDEX/COUNT (default: Slurm array / ranks)")
    infer_short_side: int | None = _f(None, "--eval folder: resize the shorter side to this")
    probs: bool = _f(False, "--eval folder: also write per-class probabilities")
    multi_scale_inference: bool = _f(False, "evaluate at --default_scale plus --extra_scales (unless --n_scales)")
    extra_scales: tuple[float, ...] = _f((0.5, 2.0), "scales added by --multi_scale_inference")
    default_scale: float = _f(1.0, "the base scale of --multi_scale_inference")
    no_metrics: bool = _f(False, "no confusion matrix, table or metrics files (unlabelled data)")
    dump_for_submission: bool = _f(False, "write Cityscapes labelIds PNGs for the test server (<result_dir>/submit)")
    dump_for_auto_labelling: bool = _f(False, "write train-id labels + confidence PNGs (<result_dir>/auto_labels)")
    dump_topn: int = _f(0, "draw the N worst images by mIoU (<result_dir>/worst_images)")
    eval_memory_gb: float | None = _f(None, "evaluation memory budget in GB: scales that do not fit run "
                                      "in overlapping windows (default: free GPU memory; CPU unlimited)")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig,
            "optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def amp_level(self) -> str:
        """The precision level in effect: explicit level, else O1 with --fp16/--apex, else O0."""
        if self.train.amp_opt_level is not None:
            return self.train.amp_opt_level
        return "O1" if (self.train.fp16 or self.train.apex) else "O0"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: _jsonable(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}

    def flags(self) -> dict[str, Any]:
        """Flat ``{flag: value}``: runx's hparams.json and sumx columns."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> Config:
        """Rebuild from :meth:`to_dict` output (lists back to tuples)."""
        argv: list[str] = []
        for section in data.values():
            for key, value in section.items():
                argv += _to_argv(key, value)
        return parse_config(argv)


# ----------------------------------------------------------------------------- parsing

def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _to_argv(key: str, value: Any) -> list[str]:
    if value is None or value is False:
        return []
    if value is True:
        return [f"--{key}"]
    if isinstance(value, (list, tuple)):
        return [f"--{key}", ",".join(str(v) for v in value)]
    return [f"--{key}", str(value)]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _comma_parser(flag: str, item_type: type, pairs: bool) -> typing.Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = [p for p in text.replace("[", "").replace("]", "").replace(" ", "").split(",") if p]
        try:
            values = tuple(item_type(p) for p in parts)
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item_type.__name__} values, got {text!r}") from e
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one value, got {text!r}")
        if pairs:  # crop_size: "S" means (S, S); "H,W" stays
            if len(values) > 2:
                raise argparse.ArgumentTypeError(f"expected S or H,W, got {text!r}")
            values = values * 2 if len(values) == 1 else values
        return values
    parse.__name__ = f"{flag} list"
    return parse


class CliParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`ConfigError` (one line, exit 2 through ``utils.errors.run_cli``)."""

    def error(self, message: str) -> typing.NoReturn:  # argparse would print usage and sys.exit(2)
        raise ConfigError(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None: the help text says what leaving it out means
    (``--n_scales``: the checkpoint's scales, else 0.5,1.0 ...), never "default: None"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _checked(parse: typing.Callable[[str], Any], check: typing.Callable[[Any], str | None] | None
             ) -> typing.Callable[[str], Any]:
    """``parse``, then ``check`` on the value: its problem becomes argparse's one-line error."""
    if check is None:
        return parse

    def run(text: str) -> Any:
        value = parse(text)
        problem = check(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    run.__name__ = getattr(parse, "__name__", "value")
    return run


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One argparse argument per field of dataclass ``cls`` (fields made with :func:`flag`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f.metadata.get("flag", f.name)
        tp, _ = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"]}
        if f.default is dataclasses.MISSING or f.metadata.get("required"):
            kwargs["required"] = True
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        if tp is bool:
            kwargs["action"] = "store_false" if f.metadata.get("negate") else "store_true"
            if f.metadata.get("negate"):
                name, kwargs["help"] = f"no_{name}", f"switch off: {kwargs['help']}"
        elif typing.get_origin(tp) is tuple:
            kwargs["type"] = _checked(_comma_parser(name, typing.get_args(tp)[0], f.name == "crop_size"),
                                      f.metadata.get("check"))
            kwargs["metavar"] = "A,B,..."
        else:
            kwargs["type"] = _checked(tp, f.metadata.get("check"))
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(f"--{name}", *f.metadata.get("aliases", ()), **kwargs)


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """The dataclass ``cls`` from the parsed arguments :func:`add_arguments` added."""
    values = vars(ns)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser generated from the dataclass fields (one flag per field)."""
    parser = CliParser(prog="train.py", description="HMSA semantic segmentation: train / evaluate",
                     allow_abbrev=False, formatter_class=HelpFormatter)
    for section, cls in SECTIONS.items():
        add_arguments(parser.add_argument_group(section), cls)
    return parser


def _unknown_flag_error(unknown: Sequence[str], parser: argparse.ArgumentParser) -> ConfigError:
    known = [s for a in parser._actions for s in a.option_strings]
    msgs = []
    for i, token in enumerate(unknown):
        if not token.startswith("-"):
            if i == 0 or not unknown[i - 1].startswith("-"):  # not the value of an unknown flag
                msgs.append(f"unexpected value {token!r} (flags take one value each)")
            continue
        flag = token.split("=", 1)[0]
        refused = reference_flags.refused_message(flag)
        if refused:
            msgs.append(refused)
            continue
        close = difflib.get_close_matches(flag, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see train.py --help"
        msgs.append(f"unknown flag {flag}{hint}")
    return ConfigError("; ".join(msgs))


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", "none", ""}


def expand_overrides(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Hydra's ``key=value`` words as the flags they stand for (``max_epoch=5`` -> ``--max_epoch 5``,
    ``do_flip=true`` -> ``--do_flip``, ``do_flip=false`` -> nothing), validated like the flags.
    A word that is the value of the flag before it (``--snapshot a=b.pth``) stays a value."""
    actions = parser._option_string_actions
    out: list[str] = []
    takes_value = False
    for word in argv:
        match = None if takes_value or word.startswith("-") else _OVERRIDE.match(word)
        if match:
            out += _override_flags(match[1], match[2], word, actions)
            takes_value = False
            continue
        out.append(word)
        action = actions.get(word) if word.startswith("-") and "=" not in word else None
        takes_value = action is not None and action.nargs != 0
    return out


def _override_flags(key: str, value: str, word: str, actions: dict[str, argparse.Action]) -> list[str]:
    on, off = actions.get(f"--{key}"), actions.get(f"--no_{key}")
    if on is None and off is None:
        close = difflib.get_close_matches(f"--{key}", list(actions), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(c.lstrip('-') + '=...' for c in close)}?" if close else ""
        raise ConfigError(f"override {word!r}: no flag --{key}{hint}")
    if on is not None and on.nargs != 0:
        return [f"--{key}", value]
    if value.lower() not in _TRUE | _FALSE:
        raise ConfigError(f"override {word!r}: --{key} is a switch; write {key}=true or {key}=false")
    wanted = value.lower() in _TRUE
    if on is not None:  # --key switches on; false: leave it off
        return [f"--{key}"] if wanted else []
    return [] if wanted else [f"--no_{key}"]  # on by default, --no_key switches off


def parse_config(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> Config:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a validated :class:`Config`; ``parser``:
    one from :func:`build_parser` to reuse (checking 1,000 runs builds it once). ``key=value``
    words work as the flags they name (:func:`expand_overrides`)."""
    parser = parser or build_parser()
    argv = expand_overrides(list(sys.argv[1:] if argv is None else argv), parser)
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        raise _unknown_flag_error(unknown, parser)
    cfg = Config(**{name: from_namespace(cls, ns) for name, cls in SECTIONS.items()})
    reference_flags.resolve(cfg)
    validate(cfg)
    problem = reference_flags.check(cfg)
    if problem:
        raise ConfigError(problem)
    return cfg


# ----------------------------------------------------------------------------- validation

def _check(ok: bool, flag: str, must: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"--{flag} must be {must}, got {value!r}")


def _validate_model_data(m: ModelConfig, d: DataConfig) -> None:
    if known_arch(m.arch):
        raise ConfigError(f"--arch: {known_arch(m.arch)}")
    _check(0 < m.mscale_lo_scale < 1, "mscale_lo_scale", "in (0, 1)", m.mscale_lo_scale)
    _check(all(c > 0 for c in d.crop_size), "crop_size", "positive (S or H,W)", d.crop_size)
    _check(d.pre_size is None or d.pre_size > 0, "pre_size", "positive", d.pre_size)
    _check(d.scale_min > 0, "scale_min", "> 0", d.scale_min)
    _check(d.scale_max >= d.scale_min, "scale_max", f">= --scale_min ({d.scale_min})", d.scale_max)
    _check(d.color_aug >= 0, "color_aug", ">= 0", d.color_aug)
    _check(0.0 <= d.class_uniform_pct <= 1.0, "class_uniform_pct", "in [0, 1]", d.class_uniform_pct)
    _check(d.class_uniform_tile > 0, "class_uniform_tile", "> 0", d.class_uniform_tile)
    _check(d.cv >= 0, "cv", ">= 0", d.cv)
    _check(d.bs_trn >= 1, "bs_trn", ">= 1", d.bs_trn)
    _check(d.bs_val >= 1, "bs_val", ">= 1", d.bs_val)
    _check(d.num_workers >= 0, "num_workers", ">= 0", d.num_workers)
    p = d.custom_coarse_prob
    _check(p is None or 0 <= p <= 1, "custom_coarse_prob", "in [0, 1]", p)


def _validate_loss_optim(lo: LossConfig, o: OptimConfig) -> None:
    w = lo.supervised_mscale_loss_wt
    _check(w is None or w >= 0, "supervised_mscale_loss_wt", ">= 0", w)
    _check(lo.ocr_alpha >= 0, "ocr_alpha", ">= 0", lo.ocr_alpha)
    _check(o.lr > 0, "lr", "> 0", o.lr)
    _check(0 <= o.momentum < 1, "momentum", "in [0, 1)", o.momentum)
    _check(o.weight_decay >= 0, "weight_decay", ">= 0", o.weight_decay)
    _check(o.poly_exp >= 0, "poly_exp", ">= 0", o.poly_exp)


def _validate_train_eval(t: TrainConfig, e: EvalConfig, d: DataConfig) -> None:
    _check(t.max_epoch >= 1, "max_epoch", ">= 1", t.max_epoch)
    _check(t.max_cu_epoch >= 0, "max_cu_epoch", ">= 0", t.max_cu_epoch)
    _check(t.max_iter is None or t.max_iter >= 1, "max_iter", ">= 1", t.max_iter)
    _check(t.val_freq >= 1, "val_freq", ">= 1", t.val_freq)
    _check(t.ckpt_freq >= 0, "ckpt_freq", ">= 0", t.ckpt_freq)
    _check(t.log_freq >= 1, "log_freq", ">= 1", t.log_freq)
    _check(t.save_top_k >= 1, "save_top_k", ">= 1", t.save_top_k)
    p = t.early_stop_patience
    _check(p is None or p >= 1, "early_stop_patience", ">= 1", p)
    _check(d.dataset_config is None or d.dataset == "custom", "dataset_config", "used with --dataset custom",
           d.dataset_config)
    _check(bool(t.result_dir), "result_dir", "a directory", t.result_dir)
    g = t.global_batch_size
    _check(g is None or (g >= d.bs_trn and g % d.bs_trn == 0), "global_batch_size",
           f"a multiple of --bs_trn ({d.bs_trn})", g)
    _check(e.eval != "folder" or bool(e.eval_folder), "eval_folder",
           "set with --eval folder", e.eval_folder)
    problem = inference_defaults.scales_problem(e.n_scales) if e.n_scales is not None else None
    if problem:  # also the scales --multi_scale_inference makes of --default_scale and --extra_scales
        raise ConfigError(f"--n_scales {','.join(f'{v:g}' for v in e.n_scales or ())}: {problem}")
    _check(e.eval_memory_gb is None or e.eval_memory_gb > 0, "eval_memory_gb", "> 0", e.eval_memory_gb)
    _check(e.dump_num_images >= 0, "dump_num_images", ">= 0", e.dump_num_images)
    _check(e.infer_short_side is None or e.infer_short_side > 0, "infer_short_side", "> 0",
           e.infer_short_side)


def validate(cfg: Config) -> None:
    """Raise :class:`ConfigError` naming the first bad flag."""
    _validate_model_data(cfg.model, cfg.data)
    _validate_loss_optim(cfg.loss, cfg.optim)
    _validate_train_eval(cfg.train, cfg.eval, cfg.data)


# ----------------------------------------------------------------------------- resume

# Flags that may differ from the checkpoint's when a run resumes: where things are, how often
# to validate/checkpoint/log, loader workers, evaluation and pictures, and the run's length
# (RESUME_LENGTH: the poly schedule then ends at the new horizon). Any other change (lr,
# optimizer, arch, data, crop, batch, loss, precision, seed ...) is refused: the optimizer
# state, schedule and sampler in the checkpoint were made for the old values.
RESUME_LENGTH = frozenset({"max_epoch", "max_iter"})
RESUME_SAFE = RESUME_LENGTH | frozenset({
    "result_dir", "resume", "snapshot", "snapshot_partial", "trust_checkpoint", "assets_path", "trunk_weights",
    "trunk_weights_partial",
    "trunk", "debug", "local_rank", "device", "dataset_root", "centroid_cache", "num_workers", "bs_val",
    "val_freq", "ckpt_freq", "log_freq", "eval", "eval_folder", "n_scales", "do_flip", "dump_assets",
    "dump_all_images", "dump_num_images", "subdirs", "shard", "infer_short_side", "probs",
    "dataset_config", "save_top_k", "early_stop_patience"})


def resume_changes(saved: typing.Mapping[str, Any] | None, cfg: Config) -> list[tuple[str, Any, Any]]:
    """``(flag, checkpoint's value, new value)`` for every flag that differs from the config
    saved in a checkpoint (a flag the checkpoint predates counts as its default)."""
    if not isinstance(saved, typing.Mapping):
        return []
    old = {k: v for section in saved.values() if isinstance(section, typing.Mapping) for k, v in section.items()}
    defaults = Config().flags()
    return [(k, old.get(k, defaults.get(k)), v) for k, v in cfg.flags().items()
            if old.get(k, defaults.get(k)) != v]


def check_resume(saved: typing.Mapping[str, Any] | None, cfg: Config, where: str) -> list[str]:
    """Raise :class:`ConfigError` listing the unsafe changes; returns notes on the safe ones that matter."""
    changes = resume_changes(saved, cfg)
    unsafe = [f"--{k} {_shown(a)} -> {_shown(b)}" for k, a, b in changes if k not in RESUME_SAFE]
    if unsafe:
        raise ConfigError(
            f"{where} was trained with other flags: {', '.join(unsafe)}; resuming would keep the checkpoint's "
            "optimizer state and schedule. Rerun with the checkpoint's values, or start a new run in another "
            f"--result_dir with --snapshot {where} to begin from its weights. Safe to change on resume: "
            "--max_epoch, --max_iter, --val_freq, --ckpt_freq, --log_freq, --num_workers, --bs_val, "
            "--dataset_root, evaluation and picture flags (README: Failure behaviour)")
    return [f"--{k} {_shown(a)} -> {_shown(b)}: the poly schedule now ends at the new length"
            for k, a, b in changes if k in RESUME_LENGTH]


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


# ----------------------------------------------------------------------------- paths, output

def expand_assets(path: str | None, assets_path: str | None = None) -> str | None:
    """Replace ``ASSETS_PATH`` in ``path`` by ``assets_path`` or ``$ASSETS_PATH``; expand ``~``."""
    if path is None:
        return None
    if "ASSETS_PATH" in path and not path.startswith("$"):
        root = assets_path or os.environ.get("ASSETS_PATH")
        if not root:
            raise ConfigError(f"--snapshot {path!r} uses ASSETS_PATH but neither --assets_path "
                              "nor the ASSETS_PATH environment variable is set")
        path = path.replace("ASSETS_PATH", root.rstrip("/"))
    return str(Path(os.path.expandvars(path)).expanduser())


def save_config(cfg: Config, path: str | os.PathLike, runtime: dict[str, Any] | None = None) -> None:
    """Write the resolved config (plus runtime facts: world size, global batch ...) as JSON."""
    from utils.io import atomic_write_json

    data: dict[str, Any] = cfg.to_dict()
    data["amp_level"] = cfg.amp_level
    if runtime:
        data["runtime"] = runtime
    atomic_write_json(path, data)
