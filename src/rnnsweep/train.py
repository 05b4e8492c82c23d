"""The one training loop of every stage: spec §3, truncated to a single step.

The state is detached after every step, so each byte position is its own
optimiser step: feed byte j, predict byte j+1, step Adam. A window of
`history_size` bytes gives history_size − 1 steps; then a fresh batch is drawn
and the state reset. The loop is flat (one iteration = one step) so that a
checkpoint taken at any step — mid-window included — resumes exactly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rnnsweep.fsutil import atomic_open, atomic_write_json, atomic_write_text
from rnnsweep.grid import Run
from rnnsweep.layout import ATTEMPTS, CHECKPOINT, RESULT
from rnnsweep.model import ByteModel, count_params

log = logging.getLogger(__name__)

EMA_START = 3.0
EMA_DECAY = 0.95

#: Called at every logged step with (step, ema_loss, steps_per_s).
Reporter = Callable[[int, float, float], None]


class Interrupted(Exception):
    """Training stopped on request (SIGTERM/SIGINT) after saving a checkpoint at `step`."""

    def __init__(self, run_id: str, step: int) -> None:
        super().__init__(f"run {run_id} interrupted; checkpoint at step {step}")
        self.step = step


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, so one config serves laptops and GPU nodes."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Sampler:
    """Batches of windows at uniformly random offsets, read straight from a uint8 array."""

    def __init__(self, data: np.ndarray, batch_size: int, history_size: int, seed: int) -> None:
        if len(data) < history_size:
            raise ValueError(f"training split has {len(data)} bytes, fewer than one window of {history_size}")
        self.data, self.batch_size, self.history_size = data, batch_size, history_size
        self.generator = torch.Generator().manual_seed(seed)
        self._span = np.arange(history_size)

    def next(self) -> torch.Tensor:
        high = len(self.data) - self.history_size + 1
        starts = torch.randint(high, (self.batch_size,), generator=self.generator).numpy()
        return torch.from_numpy(self.data[starts[:, None] + self._span])


@torch.no_grad()
def evaluate_bpb(model: ByteModel, data: np.ndarray, windows: int, history_size: int, device: torch.device) -> float:
    """Bits per byte on `windows` evenly spaced windows: the same fixed sample for every run."""
    size = min(history_size, len(data))
    starts = np.linspace(0, len(data) - size, windows).astype(np.int64)
    batch = torch.from_numpy(data[starts[:, None] + np.arange(size)]).to(device, torch.long)
    states = model.initial_state(windows, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for j in range(size - 1):
        logits, states = model(batch[:, j], states)
        total += F.cross_entropy(logits, batch[:, j + 1], reduction="sum").double()
    return total.item() / (windows * (size - 1)) / math.log(2)


@dataclass
class Progress:
    """Everything that changes during a run: exactly what a checkpoint must hold."""

    step: int = 0
    ema: float = EMA_START
    curve: list[tuple[int, float]] = field(default_factory=list)
    position: int = 0  # index within the current window; 0 means draw a new batch
    batch: torch.Tensor | None = None
    states: list[torch.Tensor] | None = None
    train_s: float = 0.0


def _save_checkpoint(path: Path, model: ByteModel, opt: torch.optim.Optimizer, sampler: Sampler, p: Progress) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "sampler": sampler.generator.get_state(),
        "step": p.step,
        "ema": p.ema,
        "curve": [list(point) for point in p.curve],
        "position": p.position,
        "batch": p.batch.to("cpu", torch.uint8) if p.batch is not None else None,  # bytes, 8x smaller
        "states": [s.cpu() for s in p.states] if p.states is not None else None,
        "train_s": p.train_s,
    }
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def _load_checkpoint(path: Path, model: ByteModel, opt: torch.optim.Optimizer, sampler: Sampler, device: torch.device) -> Progress:
    """Restore a run; never executes code from the file (weights_only)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    sampler.generator.set_state(payload["sampler"].cpu())
    states = payload["states"]
    return Progress(
        step=payload["step"],
        ema=payload["ema"],
        curve=[(int(s), float(e)) for s, e in payload["curve"]],
        position=payload["position"],
        batch=payload["batch"].to(device, torch.long) if payload["batch"] is not None else None,
        states=[s.to(device) for s in states] if states is not None else None,
        train_s=payload["train_s"],
    )


def _resume(run_dir: Path, model, opt, sampler, device) -> Progress:
    """Resume from a checkpoint if one is usable; a damaged one is moved aside, not trusted."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return Progress()
    try:
        progress = _load_checkpoint(path, model, opt, sampler, device)
    except Exception as err:  # any damage means: start this run afresh
        aside = path.with_name(f"{CHECKPOINT}.corrupt-{time.time_ns()}")
        path.rename(aside)
        log.warning("checkpoint %s is unreadable (%s); moved to %s, restarting the run from step 0", path, err, aside.name)
        return Progress()
    log.info("resuming %s from step %d", run_dir.name, progress.step)
    return progress


def _record_attempt(run_dir: Path, start_step: int) -> None:
    """Append who trains the run from which step: the provenance a fault audit reads."""
    line = {"pid": os.getpid(), "host": socket.gethostname(), "start_step": start_step, "time": time.time()}
    with open(run_dir / ATTEMPTS, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def _remove_stale_temps(run_dir: Path) -> None:
    """Temp files of a writer killed mid-write; safe to remove because the caller holds the run's lock."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _write_curve(path: Path, curve: list[tuple[int, float]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("step", "ema_loss"))
    writer.writerows((step, repr(ema)) for step, ema in curve)
    atomic_write_text(path, buf.getvalue())


def train_run(
    run: Run,
    train_data: np.ndarray,
    valid_data: np.ndarray,
    run_dir: Path,
    device: torch.device,
    checkpoint_every: int = 0,
    report: Reporter | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Train one run to exactly `run.steps` steps and write its files; return the result record.

    The result record is written last, atomically: its presence is what marks
    the run as finished, so a crash at any earlier point leaves the run to be
    claimed again (resuming from its checkpoint, if any). When `stop` is set
    the run checkpoints at the current step and raises Interrupted.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(run_dir)
    atomic_write_json(run_dir / "config.json", run.row())
    model = ByteModel(run.design, seed=run.seed).to(device)
    # Spec §3's Adam; the fused kernel (CPU and CUDA) is the same update in one pass per step.
    opt = torch.optim.Adam(model.parameters(), lr=run.lr, fused=True)
    sampler = Sampler(train_data, run.batch_size, run.history_size, seed=run.seed + 1)
    p = _resume(run_dir, model, opt, sampler, device)
    _record_attempt(run_dir, p.step)
    ema = torch.tensor(p.ema, dtype=torch.float64, device=device)
    status, started = "ok", time.perf_counter() - p.train_s

    def checkpoint() -> None:
        p.ema, p.train_s = ema.item(), time.perf_counter() - started
        _save_checkpoint(run_dir / CHECKPOINT, model, opt, sampler, p)

    while p.step < run.steps:
        if stop is not None and stop.is_set():
            checkpoint()
            raise Interrupted(run.id, p.step)
        if p.position == 0:
            p.batch = sampler.next().to(device, torch.long)
            p.states = model.initial_state(run.batch_size, device)
        logits, p.states = model(p.batch[:, p.position], p.states)
        loss = F.cross_entropy(logits, p.batch[:, p.position + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.mul_(EMA_DECAY).add_(loss.detach(), alpha=1 - EMA_DECAY)
        p.step += 1
        p.position = (p.position + 1) % (run.history_size - 1)
        if p.step % run.log_every == 0 or p.step == run.steps:
            p.ema = ema.item()
            if not math.isfinite(p.ema):
                status = "diverged"
                break
            if p.step % run.log_every == 0:
                p.curve.append((p.step, p.ema))
            if report is not None:
                report(p.step, p.ema, p.step / max(time.perf_counter() - started, 1e-9))
        if checkpoint_every and p.step % checkpoint_every == 0 and p.step < run.steps:
            checkpoint()
    train_s = time.perf_counter() - started
    ok = status == "ok"
    result = {
        "id": run.id,
        "status": status,
        "min_loss": min((e for _, e in p.curve), default=float("nan")),
        "final_loss": p.ema if ok else float("nan"),
        "valid_bpb": evaluate_bpb(model, valid_data, run.eval_windows, run.history_size, device) if ok else float("nan"),
        "params": count_params(model),
        "steps": p.step,
        "wall_s": round(time.perf_counter() - started, 3),
        "steps_per_s": round(p.step / max(train_s, 1e-9), 2),
        "device": str(device),
        "seed": run.seed,
    }
    _write_curve(run_dir / "curve.csv", p.curve)
    with atomic_open(run_dir / "weights.pt", "wb") as handle:
        torch.save(model.state_dict(), handle)
    atomic_write_json(run_dir / RESULT, result)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return result
