"""The learning-rate schedule of paper appendix A: x0.1 drops, at set epochs or when a
monitored quantity plateaus, then an optional "rate-jump" phase (lr back up to
``jump_lr``, then two more x0.1 drops).

The schedule is a list of phases with one lr each. A phase ends either at a fixed
epoch or, for a plateau boundary, after ``patience`` epochs without a relative
improvement of ``min_delta`` in the monitored value (lower is better: the trainer
monitors the training loss, so no test data steers training).
"""
from __future__ import annotations

import math
from typing import List, Optional


def parse_boundaries(text: str, what: str, count_if_plateau: int) -> List[Optional[int]]:
    """"40,52" -> [40, 52]; "plateau" -> [None] * count_if_plateau; "" -> []."""
    text = text.strip()
    if not text:
        return []
    if text == "plateau":
        return [None] * count_if_plateau
    try:
        epochs = [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated epochs or 'plateau', got {text!r}") from None
    if any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
        raise ValueError(f"{what} epochs must be positive and increasing, got {text!r}")
    return epochs


class LRSchedule:
    def __init__(self, lr: float, drops: List[Optional[int]], jump: List[Optional[int]] = (),
                 jump_lr: float = 0.003, patience: int = 5, min_delta: float = 1e-3):
        if jump and len(jump) != 3:
            raise ValueError("the rate-jump phase needs 3 boundaries: the jump and two drops")
        self.lrs = [lr * 0.1 ** i for i in range(len(drops) + 1)]
        self.boundaries = list(drops)
        if jump:
            self.lrs += [jump_lr * 0.1 ** i for i in range(3)]
            self.boundaries += list(jump)
        fixed = [b for b in self.boundaries if b is not None]
        if fixed != sorted(set(fixed)):
            raise ValueError(f"fixed lr boundaries must be increasing, got {fixed}")
        self.patience, self.min_delta = patience, min_delta
        self.phase, self.best, self.bad_epochs = 0, math.inf, 0

    @property
    def lr(self) -> float:
        return self.lrs[self.phase]

    def end_epoch(self, epoch: int, monitored: float) -> bool:
        """Call after epoch ``epoch`` (1-based count of finished epochs); returns True when
        the next epoch starts a new phase."""
        if self.phase >= len(self.boundaries):
            return False
        boundary = self.boundaries[self.phase]
        if boundary is not None:
            advance = epoch >= boundary
        else:
            if math.isinf(self.best) or monitored < self.best - self.min_delta * abs(self.best):
                self.best, self.bad_epochs = monitored, 0
            else:
                self.bad_epochs += 1
            advance = self.bad_epochs >= self.patience
        if advance:
            self.phase += 1
            self.best, self.bad_epochs = math.inf, 0
        return advance

    def state_dict(self) -> dict:
        return {"phase": self.phase, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.phase, self.best, self.bad_epochs = state["phase"], state["best"], state["bad_epochs"]
