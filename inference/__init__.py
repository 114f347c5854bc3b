"""Inference: the one configuration every door computes with (``inference.settings``) and its
documented defaults and checks (``inference.defaults``, standard library only).

The doors: ``train.py`` (validation and ``--eval``), ``predict.py`` (and ``train.py --eval folder``),
``export.py``, ``deploy`` (``Segmenter``, ``quantize``) and ``hubconf.py``. Each builds an
:class:`inference.settings.InferenceSettings` (scales, flip, precision, normalisation, short
side, memory budget) with :func:`inference.settings.build_settings`, logs
:meth:`~inference.settings.InferenceSettings.describe` and records
:meth:`~inference.settings.InferenceSettings.to_dict` (resolved) beside its outputs.

This package imports nothing at import time: ``config.py`` and ``python -m sbatch`` read
``inference.defaults`` without numpy or torch. It may import ``network``, ``datasets.info`` and
``utils``, never the programs (``train.py``, ``predict.py``, ``config.py``).
"""
