"""What a Lightning user expects of a run: best-k checkpoints, early stopping, evaluation beside the run.

``Monitor`` follows one validation metric (``--monitor``, higher is better: IoU and accuracies).
After each validation :meth:`Monitor.update` says whether it improved (``best.pth``), which
top-k checkpoint to write into ``checkpoints/`` and which fell out of the top k
(``--save_top_k``), and whether ``--early_stop_patience`` validations passed without
improvement. Its state travels in ``last.pth``, so a resumed run keeps counting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOPK_DIR = "checkpoints"


@dataclass
class Decision:
    improved: bool
    keep: str | None = None  # file name under checkpoints/ to write now
    drop: list[str] = field(default_factory=list)  # files under checkpoints/ to delete afterwards
    stop: bool = False


@dataclass
class Monitor:
    metric: str = "miou"
    top_k: int = 1
    patience: int | None = None
    best: float = -math.inf
    bad_evals: int = 0
    kept: list[tuple[float, str]] = field(default_factory=list)  # best first

    def update(self, value: float, epoch: int, iteration: int) -> Decision:
        if math.isnan(value):
            value = -math.inf
        improved = value > self.best
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        d = Decision(improved, stop=self.exhausted)
        if self.top_k > 1 and (len(self.kept) < self.top_k or value > self.kept[-1][0]):
            d.keep = f"epoch{epoch:03d}_iter{iteration:07d}_{self.metric}{max(value, 0.0):.4f}.pth"
            self.kept = sorted([*self.kept, (value, d.keep)], key=lambda t: -t[0])
            d.drop = [name for _, name in self.kept[self.top_k:]]
            self.kept = self.kept[: self.top_k]
        return d

    @property
    def exhausted(self) -> bool:
        """``--early_stop_patience`` validations in a row did not improve."""
        return self.patience is not None and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "bad_evals": self.bad_evals,
                "kept": [[v, n] for v, n in self.kept]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the counts; a different ``--monitor`` than the checkpoint's starts afresh."""
        if not state or state.get("metric") != self.metric:
            return
        self.best, self.bad_evals = float(state["best"]), int(state["bad_evals"])
        self.kept = [(float(v), str(n)) for v, n in state.get("kept", [])][: max(self.top_k, 1)]

    def stop_message(self) -> str:
        return (f"early stop: {self.metric} did not improve for {self.bad_evals} validation(s) "
                f"(--early_stop_patience {self.patience}); best {self.best:.4f}")


def write_top_k(result_dir: str | Path, decision: Decision, monitor: Monitor, save_fn: Callable[[Path], None],
                is_main: bool = True) -> None:
    """Write ``decision.keep`` with ``save_fn(path)`` (every rank calls it: it may synchronise), then,
    on the main rank, delete what fell out of the top k and list the rest in ``top_k.json``."""
    from utils.io import atomic_write_json

    folder = Path(result_dir) / TOPK_DIR
    if decision.keep is None:
        return
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
    save_fn(folder / decision.keep)
    if not is_main:
        return
    for name in decision.drop:
        (folder / name).unlink(missing_ok=True)
    atomic_write_json(folder / "top_k.json", {"metric": monitor.metric, "k": monitor.top_k,
                                              "checkpoints": [{"file": n, monitor.metric: v} for v, n in monitor.kept]})


def eval_output_dir(result_dir: str | Path, mode: str) -> Path:
    """Where ``--eval MODE`` writes: ``result_dir/eval_MODE/`` inside a training run (one holding
    ``last.pth`` or ``best.pth``), so the run's own metrics.json, best_images/, TensorBoard
    events and hparams stay as training wrote them; else ``result_dir`` itself."""
    rd = Path(result_dir)
    if (rd / "last.pth").is_file() or (rd / "best.pth").is_file():
        return rd / f"eval_{mode}"
    return rd
