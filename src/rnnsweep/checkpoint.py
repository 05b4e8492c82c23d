"""A run's checkpoint: everything its training needs to go on exactly where it stopped, even mid-window.

A checkpoint holds one run's own slices of the parameters and Adam's
moments (in its design's layout, so it resumes in any grouping), its
sampler's state, its EMA and curve so far, and, inside a window, the window's
bytes and the recurrent states. It carries the run's fingerprint
(rnnsweep.provenance): a checkpoint of other settings, data or engine path is
set aside, never resumed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnnsweep.fsutil import atomic_open
from rnnsweep.grid import Run
from rnnsweep.layout import CHECKPOINT
from rnnsweep.plan import plan

log = logging.getLogger(__name__)

#: The buffers laid out like the parameters that a checkpoint holds per run.
BUFFERS = ("params", "exp_avg", "exp_avg_sq")


@dataclass
class Progress:
    """One run's state between steps, as its checkpoint holds it (tensors on the CPU)."""

    ema: float
    step: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    position: int = 0  # index within the current window; 0 means draw a new batch
    batch: torch.Tensor | None = None  # the current window, (batch_size, history_size) uint8
    states: list[torch.Tensor] | None = None  # per layer (batch_size, state_size), within the window
    train_s: float = 0.0
    tensors: dict[str, dict[str, torch.Tensor]] | None = None  # BUFFERS as replicate state dicts; None: fresh


def save(path: Path, fingerprint: str, progress: Progress, sampler_state: torch.Tensor) -> None:
    """Write a run's checkpoint atomically: a reader sees the previous one or this one."""
    payload = {
        "fingerprint": fingerprint,
        **progress.tensors,
        "sampler": sampler_state,
        "step": progress.step,
        "ema": progress.ema,
        "curve": [list(point) for point in progress.curve],
        "position": progress.position,
        "batch": progress.batch,
        "states": progress.states,
        "train_s": progress.train_s,
    }
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def load(path: Path, run: Run, fingerprint: str, generator: torch.Generator) -> Progress:
    """Read and check a run's checkpoint, then set the run's sampler `generator`; never executes code from the file."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("fingerprint") != fingerprint:
        raise ValueError(f"it was made for fingerprint {payload.get('fingerprint')}, not this run's {fingerprint}")
    shapes = {p.name: p.shape for p in plan(run.design)}
    tensors = {key: payload[key] for key in BUFFERS}
    for key, state in tensors.items():
        if {name: tuple(t.shape) for name, t in state.items()} != shapes:
            raise ValueError(f"its {key} do not fit the design")
    step, position = int(payload["step"]), int(payload["position"])
    if not 0 <= step < run.settings.steps or position != step % (run.settings.history_size - 1):
        raise ValueError(f"step {step} at position {position} does not fit the run")
    batch, states = (payload["batch"], payload["states"]) if position else (None, None)
    if position:
        window, state = (run.settings.batch_size, run.settings.history_size), (run.settings.batch_size, run.design.state_size)
        if tuple(batch.shape) != window or [tuple(s.shape) for s in states] != [state] * run.design.n_layers:
            raise ValueError("its window does not fit the run")
    generator.set_state(payload["sampler"])  # last: a rejected checkpoint leaves the sampler fresh
    curve = [(int(s), float(e)) for s, e in payload["curve"]]
    return Progress(float(payload["ema"]), step, curve, position, batch, states, float(payload["train_s"]), tensors)


def resume(run: Run, fingerprint: str, run_dir: Path, generator: torch.Generator, fresh: Progress) -> Progress:
    """The run's progress from its checkpoint if that is this run's under these settings and data, else `fresh`.

    A checkpoint that cannot be used is moved aside (checkpoint.pt.corrupt-<ns>), kept for inspection.
    """
    path = run_dir / CHECKPOINT
    if not path.exists():
        return fresh
    try:
        progress = load(path, run, fingerprint, generator)
    except Exception as err:  # any damage means: start this run afresh
        aside = path.with_name(f"{CHECKPOINT}.corrupt-{time.time_ns()}")
        path.rename(aside)
        log.warning("checkpoint %s is not usable (%s); moved to %s, restarting the run from step 0", path, err, aside.name)
        return fresh
    log.info("resuming %s from step %d", run_dir.name, progress.step)
    return progress
