"""Learning-rate schedules as pure functions of the optimizer step."""

from __future__ import annotations

import math
from typing import Literal

Decay = Literal["linear", "polynomial", "cosine", "constant"]


def learning_rate(step: int, *, peak: float, warmup_steps: int, total_steps: int, decay: Decay = "linear",
                  end_fraction: float = 0.0, power: float = 1.0) -> float:
    """LR for optimizer step `step` (0-based): linear warmup from 0 to `peak` over `warmup_steps`, then
    decay to `end_fraction × peak` at `total_steps` (linear, polynomial of `power`, or cosine), flat after."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    end = peak * end_fraction
    if decay == "constant" or total_steps <= warmup_steps:
        return peak
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if decay == "linear":
        return end + (peak - end) * (1.0 - progress)
    if decay == "polynomial":
        return end + (peak - end) * (1.0 - progress) ** power
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
