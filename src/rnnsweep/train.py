"""The one training loop of every stage: spec §3, truncated to a single step.

The state is detached after every step, so each byte position is its own
optimiser step: feed byte j, predict byte j+1, step Adam. A window of
`history_size` bytes gives history_size − 1 steps; then a fresh batch is drawn
and the state reset. The loop is flat (one iteration = one step) so that a
checkpoint taken at any step — mid-window included — resumes exactly.

Runs with the same settings train as one batched model, one replicate per
run: on the design path, runs of one design (stage 3's seeds); on the
superset path, runs of any designs of one shape (rnnsweep.model). Each
replicate keeps its own initial weights, sampler and Adam moments, and
nothing couples replicates, so a run's curve is the one it has when trained
alone. Files, checkpoints and result records stay per run, in the run's own
design's layout, so a run resumes in any grouping.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import logging
import math
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rnnsweep import provenance
from rnnsweep.data import DataError
from rnnsweep.fsutil import append_line, atomic_open, atomic_write_json, atomic_write_text, real_dirs
from rnnsweep.grid import Run
from rnnsweep.layout import ATTEMPTS, CHECKPOINT, CURVE, CURVE_COLUMNS, RESULT, RUN_CONFIG, WEIGHTS
from rnnsweep.model import ByteModel, count_params, plan
from rnnsweep.optim import Adam

log = logging.getLogger(__name__)

EMA_START = 3.0
EMA_DECAY = 0.95
#: A run's `precision` (grid.PRECISIONS) → the dtype of each step's arithmetic (parameters and Adam stay float32).
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

#: The buffers laid out like the parameters that a checkpoint holds per run.
BUFFERS = ("params", "exp_avg", "exp_avg_sq")

#: Called at every logged step with (step, ema_loss, steps_per_s); for a group, the mean EMA of its live runs.
Reporter = Callable[[int, float, float], None]


class Interrupted(Exception):
    """Training stopped on request (SIGTERM/SIGINT) after checkpointing every run of the group at `step`."""

    def __init__(self, run_ids: list[str], step: int) -> None:
        super().__init__(f"run{'s' * (len(run_ids) > 1)} {', '.join(run_ids)} interrupted; checkpoint at step {step}")
        self.step = step


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS.

    Every step frees and reallocates the same large tensors. glibc serves
    blocks above its mmap threshold (dynamic, from 128 KB) with fresh
    mappings, so a step can page-fault through them all again: measured here,
    2,000 faults per step and half the speed for ten batched 1×32 replicates,
    depending on how the threshold happened to adapt. Fixing both thresholds
    at 32 MB keeps such blocks in the heap. Does nothing without glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, so one config serves laptops and GPU nodes."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Sampler:
    """Batches of windows at uniformly random offsets, read straight from a uint8 array."""

    def __init__(self, data: np.ndarray, batch_size: int, history_size: int, seed: int) -> None:
        if len(data) < history_size:
            raise DataError(f"the training split has {len(data)} bytes, fewer than one window of {history_size}")
        self.data, self.batch_size, self.history_size = data, batch_size, history_size
        self.generator = torch.Generator().manual_seed(seed)
        self._span = np.arange(history_size)

    def next(self) -> torch.Tensor:
        high = len(self.data) - self.history_size + 1
        starts = torch.randint(high, (self.batch_size,), generator=self.generator).numpy()
        return torch.from_numpy(self.data[starts[:, None] + self._span])


def _positions_first(windows: list[torch.Tensor]) -> torch.Tensor:
    """Per-replicate (batch, history) windows as one (history, R, batch) tensor: each position's slice is contiguous."""
    return torch.stack(windows).permute(2, 0, 1).contiguous()


def evaluate_bpb(model: ByteModel, data: np.ndarray, windows: int, history_size: int) -> list[float]:
    """Bits per byte of every replicate on `windows` evenly spaced windows: the same fixed sample for every run."""
    size = min(history_size, len(data))
    starts = np.linspace(0, len(data) - size, windows).astype(np.int64)
    text = _positions_first([torch.from_numpy(data[starts[:, None] + np.arange(size)])])
    text = text.to(model.device, torch.long).expand(-1, model.replicates, -1)
    states = model.initial_state(windows)
    total = torch.zeros(model.replicates, dtype=torch.float64, device=model.device)
    for j in range(size - 1):
        logits, states = model.logits(text[j], states)
        total += F.cross_entropy(logits.transpose(1, 2), text[j + 1], reduction="none").sum(1, dtype=torch.float64)
    return [t / (windows * (size - 1)) / math.log(2) for t in total.tolist()]


@dataclass
class Progress:
    """One run's state between steps, as its checkpoint holds it (tensors on the CPU)."""

    step: int = 0
    ema: float = EMA_START
    curve: list[tuple[int, float]] = field(default_factory=list)
    position: int = 0  # index within the current window; 0 means draw a new batch
    batch: torch.Tensor | None = None  # the current window, (batch_size, history_size) uint8
    states: list[torch.Tensor] | None = None  # per layer (batch_size, state_size), within the window
    train_s: float = 0.0
    tensors: dict[str, dict[str, torch.Tensor]] | None = None  # BUFFERS as replicate state dicts; None: fresh


def _load_checkpoint(path: Path, run: Run, fingerprint: str, sampler: Sampler) -> Progress:
    """Read and check a run's checkpoint; never executes code from the file (weights_only)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("fingerprint") != fingerprint:
        raise ValueError(f"it was made for fingerprint {payload.get('fingerprint')}, not this run's {fingerprint}")
    shapes = {p.name: p.shape for p in plan(run.design)}
    tensors = {key: payload[key] for key in BUFFERS}
    for key, state in tensors.items():
        if {name: tuple(t.shape) for name, t in state.items()} != shapes:
            raise ValueError(f"its {key} do not fit the design")
    step, position = int(payload["step"]), int(payload["position"])
    if not 0 <= step < run.steps or position != step % (run.history_size - 1):
        raise ValueError(f"step {step} at position {position} does not fit the run")
    batch, states = (payload["batch"], payload["states"]) if position else (None, None)
    if position:
        window, state = (run.batch_size, run.history_size), (run.batch_size, run.design.state_size)
        if tuple(batch.shape) != window or [tuple(s.shape) for s in states] != [state] * run.design.n_layers:
            raise ValueError("its window does not fit the run")
    sampler.generator.set_state(payload["sampler"])  # last: a rejected checkpoint leaves the sampler fresh
    curve = [(int(s), float(e)) for s, e in payload["curve"]]
    return Progress(step, float(payload["ema"]), curve, position, batch, states, float(payload["train_s"]), tensors)


def _resume(run: Run, fingerprint: str, run_dir: Path, sampler: Sampler) -> Progress:
    """Resume from a checkpoint if it is this run's under these settings and data; any other is moved aside."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return Progress()
    try:
        progress = _load_checkpoint(path, run, fingerprint, sampler)
    except Exception as err:  # any damage means: start this run afresh
        aside = path.with_name(f"{CHECKPOINT}.corrupt-{time.time_ns()}")
        path.rename(aside)
        log.warning("checkpoint %s is not usable (%s); moved to %s, restarting the run from step 0", path, err, aside.name)
        return Progress()
    log.info("resuming %s from step %d", run_dir.name, progress.step)
    return progress


def _record_attempt(run_dir: Path, start_step: int) -> None:
    """Append who trains the run from which step: the provenance a fault audit reads."""
    line = {"pid": os.getpid(), "host": socket.gethostname(), "start_step": start_step, "time": time.time()}
    append_line(run_dir / ATTEMPTS, json.dumps(line))


def _remove_stale_temps(run_dir: Path) -> None:
    """Temp files of a writer killed mid-write; safe to remove because the caller holds the run's lock."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _write_curve(path: Path, curve: list[tuple[int, float]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    writer.writerows((step, repr(ema)) for step, ema in curve)
    atomic_write_text(path, buf.getvalue())


class _Group:
    """Runs at the same step trained as one batched model; replicate r is runs[r]."""

    def __init__(
        self,
        runs: list[Run],
        run_dirs: list[Path],
        progress: list[Progress],
        samplers: list[Sampler],
        device: torch.device,
        data_id: str,
        fingerprints: list[str],
    ) -> None:
        self.runs, self.run_dirs, self.progress, self.samplers, self.device = runs, run_dirs, progress, samplers, device
        self.settings = runs[0]  # every run of a group has the same settings and path
        self.data_id, self.fingerprints = data_id, fingerprints
        self.model = ByteModel(
            [run.design for run in runs], [run.seed for run in runs], device,
            compute_dtype=COMPUTE_DTYPES[self.settings.precision], superset=self.settings.engine == "superset",
        )
        self.opt = Adam(self.model.theta, self.model.grad, self.settings.lr)
        self.buffers = dict(zip(BUFFERS, (self.model.theta, self.opt.exp_avg, self.opt.exp_avg_sq)))
        for r, p in enumerate(progress):
            if p.tensors is not None:
                for key, flat in self.buffers.items():
                    self.model.load_replicate(r, p.tensors[key], flat)
        self.step, self.position = progress[0].step, progress[0].position
        self.opt.steps.fill_(self.step)
        self.ema = torch.tensor([p.ema for p in progress], dtype=torch.float64, device=device)
        self.windows, self.states = None, None
        if self.position:
            self.windows = _positions_first([p.batch for p in progress]).to(device, torch.long)
            self.states = [torch.stack(layer).to(device, self.model.compute_dtype) for layer in zip(*(p.states for p in progress))]
        self.live = list(range(len(runs)))  # replicates that have not diverged
        self.started = time.perf_counter()

    def _train_s(self, r: int, now: float) -> float:
        return self.progress[r].train_s + now - self.started

    def train(
        self, valid_data: np.ndarray, checkpoint_every: int, report: Reporter | None, stop: threading.Event | None
    ) -> list[dict]:
        """Train to `steps` (or until every run diverged); return the runs' result records in order."""
        s, model, opt = self.settings, self.model, self.opt
        results: dict[int, dict] = {}
        while self.step < s.steps and self.live:
            if stop is not None and stop.is_set():
                self._checkpoint()
                raise Interrupted([self.runs[r].id for r in self.live], self.step)
            if self.position == 0:
                self.windows = _positions_first([sampler.next() for sampler in self.samplers]).to(self.device, torch.long)
                self.states = model.initial_state(s.batch_size)
            loss, self.states = model.train_step(self.windows[self.position], self.windows[self.position + 1], self.states)
            opt.step()
            self.ema.mul_(EMA_DECAY).add_(loss, alpha=1 - EMA_DECAY)
            self.step += 1
            self.position = (self.position + 1) % (s.history_size - 1)
            if self.step % s.log_every == 0 or self.step == s.steps:
                self._log(results, report)
            if checkpoint_every and self.step % checkpoint_every == 0 and self.step < s.steps:
                self._checkpoint()
        ended = time.perf_counter()
        bpb = evaluate_bpb(model, valid_data, s.eval_windows, s.history_size) if self.live else []
        for r in self.live:
            results[r] = self._finish(r, "ok", bpb[r], ended)
        return [results[r] for r in range(len(self.runs))]

    def _log(self, results: dict[int, dict], report: Reporter | None) -> None:
        """Record the curve point of every live run; a run whose EMA is no longer finite ends as diverged."""
        now, emas = time.perf_counter(), self.ema.tolist()
        for r in list(self.live):
            p = self.progress[r]
            p.ema = emas[r]
            if not math.isfinite(p.ema):
                self.live.remove(r)
                results[r] = self._finish(r, "diverged", float("nan"), now)
            elif self.step % self.settings.log_every == 0:
                p.curve.append((self.step, p.ema))
        if report is not None and self.live:
            rate = self.step / max(self._train_s(self.live[0], now), 1e-9)
            report(self.step, statistics.fmean(emas[r] for r in self.live), rate)

    def _replicate(self, flat: torch.Tensor, r: int) -> dict[str, torch.Tensor]:
        return {name: t.cpu() for name, t in self.model.replicate(flat, r).items()}

    def _checkpoint(self) -> None:
        """Write each live run's own checkpoint: its slices of every buffer and its own progress."""
        emas, now = self.ema.tolist(), time.perf_counter()
        for r in self.live:
            payload = {
                "fingerprint": self.fingerprints[r],
                **{key: self._replicate(flat, r) for key, flat in self.buffers.items()},
                "sampler": self.samplers[r].generator.get_state(),
                "step": self.step,
                "ema": emas[r],
                "curve": [list(point) for point in self.progress[r].curve],
                "position": self.position,
                # The window as bytes (8x smaller) and the states: copies, not views of the whole group.
                "batch": self.windows[:, r].T.to("cpu", torch.uint8) if self.position else None,
                "states": [s[r].to("cpu", copy=True) for s in self.states] if self.position else None,
                "train_s": self._train_s(r, now),
            }
            with atomic_open(self.run_dirs[r] / CHECKPOINT, "wb") as handle:
                torch.save(payload, handle)

    def _finish(self, r: int, status: str, valid_bpb: float, ended: float) -> dict:
        """Write the run's curve, weights and, last and atomically, its result record."""
        run, run_dir, p = self.runs[r], self.run_dirs[r], self.progress[r]
        train_s = self._train_s(r, ended)
        ok = status == "ok"
        result = {
            "id": run.id,
            "status": status,
            "min_loss": min((e for _, e in p.curve), default=float("nan")),
            "final_loss": p.ema if ok else float("nan"),
            "valid_bpb": valid_bpb,
            "params": count_params(run.design),
            "steps": self.step,
            "wall_s": round(self._train_s(r, time.perf_counter()), 3),
            "steps_per_s": round(self.step / max(train_s, 1e-9), 2),
            "device": str(self.device),
            "precision": run.precision,
            "seed": run.seed,
            "engine": run.engine,
            "fingerprint": self.fingerprints[r],
            "data": self.data_id,
        }
        _write_curve(run_dir / CURVE, p.curve)
        with atomic_open(run_dir / WEIGHTS, "wb") as handle:
            torch.save(self._replicate(self.model.theta, r), handle)
        atomic_write_json(run_dir / RESULT, result)
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
        return result


def train_runs(
    runs: list[Run],
    train_data: np.ndarray,
    valid_data: np.ndarray,
    run_dirs: list[Path],
    device: torch.device,
    checkpoint_every: int = 0,
    report: Reporter | None = None,
    stop: threading.Event | None = None,
    data_id: str | None = None,
) -> list[dict]:
    """Train runs of one batch key (grid.Run.batch_key) to exactly `steps` steps; return their result records.

    Each run resumes from its own checkpoint. Runs whose checkpoints are at
    different steps (trained in different groupings before) are trained in
    batches of equal step, one after another. A run's result record is written
    last, atomically: its presence is what marks the run as finished, so a
    crash at any earlier point leaves the run to be claimed again. When `stop`
    is set every run of the batch in training checkpoints and Interrupted is raised.
    `data_id` is provenance.data_id of the two splits, when the caller has it already.
    """
    if len(runs) != len(run_dirs) or len({run.batch_key for run in runs}) != 1:
        raise ValueError(
            "train_runs needs one folder per run, and runs of one design (on the superset path: one shape) with the same settings"
        )
    data_id = data_id or provenance.data_id(train_data, valid_data)
    fingerprints = [provenance.fingerprint(run, data_id) for run in runs]
    progress, samplers = [], []
    for run, run_dir, fingerprint in zip(runs, run_dirs, fingerprints):
        real_dirs(run_dir.parent.parent, run_dir)  # the stage folder's runs/<id>, through no symbolic link
        _remove_stale_temps(run_dir)
        atomic_write_json(run_dir / RUN_CONFIG, {**run.row(), "fingerprint": fingerprint, "data": data_id})
        samplers.append(Sampler(train_data, run.batch_size, run.history_size, seed=run.seed + 1))
        progress.append(_resume(run, fingerprint, run_dir, samplers[-1]))
        _record_attempt(run_dir, progress[-1].step)
    results: dict[int, dict] = {}
    for step in sorted({p.step for p in progress}, reverse=True):  # the runs closest to done first
        part = [i for i, p in enumerate(progress) if p.step == step]
        pick = lambda seq: [seq[i] for i in part]  # noqa: E731
        group = _Group(pick(runs), pick(run_dirs), pick(progress), pick(samplers), device, data_id, pick(fingerprints))
        results.update(zip(part, group.train(valid_data, checkpoint_every, report, stop)))
    return [results[i] for i in range(len(runs))]


def train_run(
    run: Run,
    train_data: np.ndarray,
    valid_data: np.ndarray,
    run_dir: Path,
    device: torch.device,
    checkpoint_every: int = 0,
    report: Reporter | None = None,
    stop: threading.Event | None = None,
    data_id: str | None = None,
) -> dict:
    """Train one run alone: `train_runs` with a group of one."""
    return train_runs([run], train_data, valid_data, [run_dir], device, checkpoint_every, report, stop, data_id)[0]
