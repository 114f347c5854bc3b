"""torch.hub entry points, so code outside this checkout can load trained models.

    import torch
    model = torch.hub.load("/path/to/checkout", "ocrnet_hrnet_mscale", source="local",
                           snapshot="best.safetensors")          # nn.Module, eval mode
    seg = torch.hub.load("/path/to/checkout", "segmenter", source="local",
                         snapshot="best.pth", flip=True)    # scales: the checkpoint's validated ones
    out = seg("street.jpg")                                      # deploy.Segmenter

``ocrnet(arch=..., snapshot=...)`` takes any architecture name, ``ocrnet.timm.*`` included
(the checkpoint's own when ``arch`` is omitted). One entry point per registered architecture,
named after it in lower case with ``.`` as ``_`` (``ocrnet.HRNet_Mscale_w18s`` ->
``ocrnet_hrnet_mscale_w18s``); ``torch.hub.list`` shows them. No weights are downloaded:
``snapshot`` is a local file (project checkpoint, slim ``.safetensors``, or the reference's
published ``.pth``); without it the weights are random. The checkout stays on ``sys.path``
after loading, because the project's modules import their siblings lazily (``import network``,
``import datasets``).
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "timm", "numpy", "cv2", "PIL"]

# Always insert: torch.hub removes its own temporary entry for this folder after loading, and
# the project's modules import their siblings lazily, after that.
_HERE = str(Path(__file__).resolve().parent)
sys.path.insert(0, _HERE)

from deploy.meta import inference_settings, load_model  # noqa: E402  (needs the checkout on sys.path)
from deploy.segmenter import Segmenter  # noqa: E402
from network import list_models  # noqa: E402


def _load(snapshot: str | None, arch: str | None, num_classes: int | None,
          eval_scales: tuple[float, ...] | None):
    model, info = load_model(snapshot, arch, num_classes, eval_scales=eval_scales)
    setattr(model, "info", info)  # class names, colours, mean/std for the caller  # noqa: B010
    settings = inference_settings(info, bool(getattr(model, "multiscale", False)), eval_scales)
    setattr(model, "inference_settings", settings)  # noqa: B010
    return model


def _entry(arch: str):
    def load(snapshot: str | None = None, num_classes: int | None = None,
             eval_scales: tuple[float, ...] | None = None):
        return _load(snapshot, arch, num_classes, eval_scales)

    load.__name__ = arch.replace(".", "_").lower()
    load.__doc__ = (f"{arch} in eval mode; ``snapshot``: local checkpoint (.pth/.safetensors), "
                    "None = random weights (then ``num_classes`` sets the class count, default 19). "
                    "``eval_scales``: what ``model(x)`` combines (default: the scales the checkpoint was "
                    "validated with, else 0.5,1.0 for multi-scale models). ``model.info`` holds class names, "
                    "colours and mean/std; ``model.inference_settings`` the one inference configuration "
                    "(``network.predict(model, x, scales=..., flip=...)`` with it gives predict.py's logits).")
    return load


for _arch in list_models():
    globals()[_arch.replace(".", "_").lower()] = _entry(_arch)


def ocrnet(arch: str | None = None, snapshot: str | None = None, num_classes: int | None = None,
           eval_scales: tuple[float, ...] | None = None):
    """Any architecture by name, the ``ocrnet.timm.<timm_name>[_fuse<P>][_Mscale]`` family included
    (``torch.hub.load(checkout, "ocrnet", source="local", snapshot="best.pth")``: the checkpoint's own
    ``arch`` when ``arch`` is None). Same result as the per-architecture entry points."""
    if arch is None and snapshot is None:
        raise ValueError("pass arch= (random weights) or snapshot= (a trained checkpoint)")
    return _load(snapshot, arch, num_classes, eval_scales)


def segmenter(snapshot: str, arch: str | None = None, num_classes: int | None = None, **kwargs) -> Segmenter:
    """A :class:`deploy.Segmenter` for ``snapshot`` (kwargs: ``scales``, ``flip``, ``precision``, ``device``,
    ``short_side``; defaults: the one inference configuration, as predict.py's)."""
    return Segmenter.from_checkpoint(snapshot, arch=arch, num_classes=num_classes, **kwargs)
