"""Training-loop pieces that ``train.py`` wires: the reference's fine-tuning flags (``finetune``) and
the evaluation dumps (``dump``: pictures, label files, worst images). Above ``config``, ``network`` and
``datasets`` (they read flags and class tables); below the commands (docs/ARCHITECTURE.md, Layers)."""
