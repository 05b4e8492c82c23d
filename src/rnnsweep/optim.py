"""The optimiser of docs/study.md §3: Adam with PyTorch's defaults, over the engine's one flat parameter buffer,
and the learning rate of each step.

It runs the very kernel `torch.optim.Adam(fused=True)` runs (a test pins the
two bit for bit), called directly: with one tensor the kernel takes a few
microseconds, while the generic optimiser's Python bookkeeping around it costs
about 0.1 ms per step, a tenth of a small cell's whole step. For the same
reason a schedule is a closed form of the step (`Schedule.rate`), not an
`lr_scheduler`: the rate is one float handed to the kernel, and a run resumed
at step i takes the rate of step i from the step alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

BETAS = (0.9, 0.999)
EPS = 1e-8
#: How the rate moves after the warm-up (the profile's `lr_schedule`; a test holds the schema's choices to these).
SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each of a run's `steps` steps: `lr` after a linear warm-up of `warmup` steps, held
    (constant) or decayed (cosine, linear) towards `min_fraction` × lr, which the step after the last would take."""

    lr: float
    steps: int
    kind: str = "constant"
    warmup: int = 0
    min_fraction: float = 0.1

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> "Schedule":
        """The schedule of runs with these training settings (rnnsweep.grid.Settings: the profile schema's names)."""
        return cls(settings["lr"], settings["steps"], settings["lr_schedule"], settings["warmup_steps"], settings["min_lr_fraction"])

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"lr_schedule {self.kind!r} is not one of {', '.join(SCHEDULES)}")

    @property
    def constant(self) -> bool:
        """Whether every step takes `lr`: training then never touches the rate, and runs as before schedules."""
        return self.kind == "constant" and self.warmup == 0

    def rate(self, step: int) -> float:
        """The rate of step `step`, counted from 0 (docs/study.md §3)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        done = (step - self.warmup) / (self.steps - self.warmup)  # below 1: only a step before `steps` asks
        m = self.min_fraction
        if self.kind == "cosine":
            return self.lr * (m + (1 - m) * (1 + math.cos(math.pi * done)) / 2)
        return self.lr * (1 - (1 - m) * done)


class Adam:
    """Adam over one flat buffer and its gradient; `lr` is the rate of the next step (a schedule sets it step by step)."""

    def __init__(self, param: Tensor, grad: Tensor, lr: float) -> None:
        self.param, self.grad, self.lr = param, grad, lr
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.steps = torch.zeros((), dtype=torch.float32, device=param.device)

    def step(self) -> None:
        self.steps.add_(1)
        torch._fused_adam_(
            [self.param], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
            lr=self.lr, beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False,
        )
