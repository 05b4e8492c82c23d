"""The one training loop of every stage: docs/study.md §3, truncated to a single step.

The state is detached after every step, so each position is its own
optimiser step: feed token j, predict token j+1, step Adam. A token is a byte,
or with a BPE tokenizer a piece of a learnt vocabulary (rnnsweep.tokens). A
window of `history_size` tokens gives history_size − 1 steps; then a fresh batch is drawn
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

import json
import logging
import math
import os
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from rnnsweep import checkpoint
from rnnsweep.checkpoint import BUFFERS, Progress
from rnnsweep.data import SPLITS, DataError, held_out_windows
from rnnsweep.fsutil import append_line, atomic_write_json, real_dirs
from rnnsweep.grid import Run
from rnnsweep.layout import ATTEMPTS, CHECKPOINT, RUN_CONFIG
from rnnsweep.model import ByteModel
from rnnsweep.plan import count_params
from rnnsweep.optim import Adam, Schedule
from rnnsweep.results import Result, write_finished
from rnnsweep.tokens import BYTES, Text

log = logging.getLogger(__name__)

#: Where a run's EMA loss starts, in nats per byte (docs/study.md §3). A BPE run starts at the same value per
#: byte: this times the training split's bytes per token, so that `min_loss` ranks BPE runs by their training,
#: not by how far the EMA had climbed from a start far below their per-token loss.
EMA_START = 3.0
EMA_DECAY = 0.95
#: A run's `precision` (grid.PRECISIONS) → the dtype of each step's arithmetic (parameters and Adam stay float32).
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

#: The splits every finished run is scored on, each giving `<split>_bpb` and `<split>_bytes` in its result.
HELD_OUT = ("valid", "test")

#: Called at every logged step with (step, ema_loss, steps_per_s); for a group, the mean EMA of its live runs.
Reporter = Callable[[int, float, float], None]


class Interrupted(Exception):
    """Training stopped on request (SIGTERM/SIGINT) after checkpointing every run of the group at `step`."""

    def __init__(self, run_ids: list[str], step: int) -> None:
        super().__init__(f"run{'s' * (len(run_ids) > 1)} {', '.join(run_ids)} interrupted; checkpoint at step {step}")
        self.step = step


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, so one config serves laptops and GPU nodes."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Sampler:
    """Batches of windows at uniformly random offsets, read straight from an array of bytes or token ids."""

    def __init__(self, data: np.ndarray, batch_size: int, history_size: int, seed: int) -> None:
        if len(data) < history_size:
            raise DataError(f"the training split has {len(data)} tokens, fewer than one window of {history_size}")
        self.data, self.batch_size, self.history_size = data, batch_size, history_size
        self.generator = torch.Generator().manual_seed(seed)
        self._span = np.arange(history_size)

    def next(self) -> torch.Tensor:
        high = len(self.data) - self.history_size + 1
        starts = torch.randint(high, (self.batch_size,), generator=self.generator).numpy()
        return _tensor(self.data[starts[:, None] + self._span])


def _tensor(ids: np.ndarray) -> torch.Tensor:
    """Bytes stay uint8; 16-bit token ids widen to int32, which torch computes with."""
    return torch.from_numpy(ids if ids.dtype == np.uint8 else ids.astype(np.int32))


def _positions_first(windows: list[torch.Tensor]) -> torch.Tensor:
    """Per-replicate (batch, history) windows as one (history, R, batch) tensor: each position's slice is contiguous."""
    return torch.stack(windows).permute(2, 0, 1).contiguous()


#: Held-out windows scored at once: bounds the memory of the evaluation, not its result.
EVAL_CHUNK = 256


@dataclass(frozen=True)
class Score:
    """A held-out score: bits per byte of every replicate, the tokens predicted and the bytes they cover."""

    bpb: list[float]
    tokens: int
    bytes: int


def evaluate_bpb(
    model: ByteModel, data: np.ndarray, eval_bytes: int, history_size: int, widths: np.ndarray | None = None
) -> Score:
    """The held-out slice of `data` scored without gradients: summed nats over ln 2 × the bytes predicted.

    `widths` gives the bytes each id stands for (None: ids are bytes, one each), so that runs on bytes and
    on tokens are scored on one scale.
    """
    windows = held_out_windows(data, eval_bytes, history_size, widths)
    total = torch.zeros(model.replicates, dtype=torch.float64, device=model.device)
    for first in range(0, len(windows), EVAL_CHUNK):
        part = _tensor(windows[first:first + EVAL_CHUNK])
        text = _positions_first([part]).to(model.device, torch.long).expand(-1, model.replicates, -1)  # (H, R, n)
        states = model.initial_state(len(part))
        for j in range(history_size - 1):
            logits, states = model.logits(text[j], states)  # (R, n, vocab)
            total += F.cross_entropy(logits.transpose(1, 2), text[j + 1], reduction="none").sum(1, dtype=torch.float64)
    predicted = windows[:, 1:]
    covered = int(predicted.size if widths is None else widths[predicted].sum())
    return Score([t / covered / math.log(2) for t in total.tolist()], int(predicted.size), covered)


def _record_attempt(run_dir: Path, start_step: int) -> None:
    """Append who trains the run from which step: the provenance a fault audit reads."""
    line = {"pid": os.getpid(), "host": socket.gethostname(), "start_step": start_step, "time": time.time()}
    append_line(run_dir / ATTEMPTS, json.dumps(line))


def _remove_stale_temps(run_dir: Path) -> None:
    """Temp files of a writer killed mid-write; safe to remove because the caller holds the run's lock."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def optimiser_step(model: ByteModel, opt: Adam, schedule: Schedule, grad_clip: float, step: int) -> None:
    """The update of step `step` (counted from 0), after backward: each replicate's gradient clipped to `grad_clip`
    by its own norm (0: not at all), then Adam at the step's rate.

    At the defaults (no clipping, a constant rate) neither is touched, so default training runs exactly the
    kernels it ran before either setting existed, and gives the same numbers.
    """
    if grad_clip:
        model.clip_grad_norm_(grad_clip)
    if not schedule.constant:
        opt.lr = schedule.rate(step)
    opt.step()


@dataclass
class Member:
    """One run of a group with what is its own: its folder, its progress (resumed or fresh), its batches and fingerprint."""

    run: Run
    folder: Path
    progress: Progress
    sampler: Sampler
    fingerprint: str


class _Group:
    """Runs at the same step trained as one batched model; replicate r is members[r]."""

    def __init__(self, members: list[Member], device: torch.device, text: Text) -> None:
        self.members, self.device, self.text = members, device, text
        runs, progress = [m.run for m in members], [m.progress for m in members]
        self.head = runs[0]  # every run of a group has the same settings, path and tokens
        self.settings = self.head.settings
        self.model = ByteModel(
            [run.design for run in runs], [run.seed for run in runs], device,
            compute_dtype=COMPUTE_DTYPES[self.head.precision], superset=self.head.engine == "superset",
            vocab=self.head.vocab_size,
        )
        self.opt = Adam(self.model.theta, self.model.grad, self.settings.lr)
        self.schedule = Schedule.of(self.settings)
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
        return self.members[r].progress.train_s + now - self.started

    def train(self, checkpoint_every: int, report: Reporter | None, stop: threading.Event | None) -> list[dict]:
        """Train to `steps` (or until every run diverged); return the runs' result records in order."""
        s, model, opt = self.settings, self.model, self.opt
        results: dict[int, dict] = {}
        while self.step < s.steps and self.live:
            if stop is not None and stop.is_set():
                self._checkpoint()
                raise Interrupted([self.members[r].run.id for r in self.live], self.step)
            if self.position == 0:
                self.windows = _positions_first([m.sampler.next() for m in self.members]).to(self.device, torch.long)
                self.states = model.initial_state(s.batch_size)
            loss, self.states = model.train_step(self.windows[self.position], self.windows[self.position + 1], self.states)
            optimiser_step(model, opt, self.schedule, s.grad_clip, self.step)
            self.ema.mul_(EMA_DECAY).add_(loss, alpha=1 - EMA_DECAY)
            self.step += 1
            self.position = (self.position + 1) % (s.history_size - 1)
            if self.step % s.log_every == 0 or self.step == s.steps:
                self._log(results, report)
            if checkpoint_every and self.step % checkpoint_every == 0 and self.step < s.steps:
                self._checkpoint()
        ended = time.perf_counter()
        held_out, widths = dict(zip(SPLITS, self.text.splits)), self.text.vocab.widths  # a byte's width is 1
        scores = {split: evaluate_bpb(model, held_out[split], s.eval_bytes, s.history_size, widths) for split in HELD_OUT}
        for r in self.live:
            results[r] = self._finish(r, "ok", {split: (score.bpb[r], score.tokens, score.bytes) for split, score in scores.items()}, ended)
        return [results[r] for r in range(len(self.members))]

    def _log(self, results: dict[int, dict], report: Reporter | None) -> None:
        """Record the curve point of every live run; a run whose EMA is no longer finite ends as diverged."""
        now, emas = time.perf_counter(), self.ema.tolist()
        for r in list(self.live):
            p = self.members[r].progress
            p.ema = emas[r]
            if not math.isfinite(p.ema):
                self.live.remove(r)
                results[r] = self._finish(r, "diverged", {split: (float("nan"), 0, 0) for split in HELD_OUT}, now)
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
            progress = Progress(
                emas[r], self.step, self.members[r].progress.curve, self.position,
                # The window as bytes (8x smaller) or ids, and the states: copies, not views of the whole group.
                self.windows[:, r].T.to("cpu", self._window_dtype) if self.position else None,
                [s[r].to("cpu", copy=True) for s in self.states] if self.position else None,
                self._train_s(r, now),
                {key: self._replicate(flat, r) for key, flat in self.buffers.items()},
            )
            m = self.members[r]
            checkpoint.save(m.folder / CHECKPOINT, m.fingerprint, progress, m.sampler.generator.get_state())

    @property
    def _window_dtype(self) -> torch.dtype:
        return torch.uint8 if self.head.vocab_size <= 256 else torch.int32

    def _finish(self, r: int, status: str, held_out: dict[str, tuple[float, int, int]], ended: float) -> dict:
        """Write the run's curve, weights and, last and atomically, its result record."""
        m = self.members[r]
        run, run_dir, p = m.run, m.folder, m.progress
        train_s = self._train_s(r, ended)
        ok = status == "ok"
        result = Result(
            id=run.id,
            status=status,
            min_loss=min((e for _, e in p.curve), default=float("nan")),
            final_loss=p.ema if ok else float("nan"),
            valid_bpb=held_out["valid"][0],
            test_bpb=held_out["test"][0],
            valid_bytes=held_out["valid"][2],
            test_bytes=held_out["test"][2],
            valid_tokens=held_out["valid"][1],
            test_tokens=held_out["test"][1],
            params=count_params(run.design, run.vocab_size),
            steps=self.step,
            wall_s=round(self._train_s(r, time.perf_counter()), 3),
            steps_per_s=round(self.step / max(train_s, 1e-9), 2),
            device=str(self.device),
            precision=run.precision,
            seed=run.seed,
            engine=run.engine,
            fingerprint=m.fingerprint,
            data=self.text.data_id,
        )
        record = asdict(result)
        write_finished(run_dir, record, p.curve, self._replicate(self.model.theta, r))
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
        return record


def train_runs(
    runs: list[Run],
    text: Text,
    run_dirs: list[Path],
    device: torch.device,
    checkpoint_every: int = 0,
    report: Reporter | None = None,
    stop: threading.Event | None = None,
) -> list[dict]:
    """Train runs of one batch key (grid.Run.batch_key) to exactly `steps` steps; return their result records.

    Each run resumes from its own checkpoint. Runs whose checkpoints are at
    different steps (trained in different groupings before) are trained in
    batches of equal step, one after another. A run's result record is written
    last, atomically: its presence is what marks the run as finished, so a
    crash at any earlier point leaves the run to be claimed again. When `stop`
    is set every run of the batch in training checkpoints and Interrupted is raised.
    `text` is what the runs read (rnnsweep.tokens.load_text, or Text.of_bytes for byte splits in hand).
    """
    if len(runs) != len(run_dirs) or len({run.batch_key for run in runs}) != 1:
        raise ValueError(
            "train_runs needs one folder per run, and runs of one design (on the superset path: one shape) with the same settings"
        )
    if (runs[0].tokenizer == "bytes") != (text.vocab is BYTES) or runs[0].vocab_size != text.vocab.size:
        raise ValueError(f"runs of {runs[0].tokenizer} with vocab_size {runs[0].vocab_size} cannot read ids of a vocabulary of {text.vocab.size}")
    train_data = text.splits[0]
    fingerprints = [text.fingerprint(run) for run in runs]  # before any write, as the samplers
    samplers = [Sampler(train_data, run.settings.batch_size, run.settings.history_size, seed=run.seed + 1) for run in runs]
    members = [_member(*each, text) for each in zip(runs, run_dirs, samplers, fingerprints)]
    results: dict[int, dict] = {}
    for step in sorted({m.progress.step for m in members}, reverse=True):  # the runs closest to done first
        part = [i for i, m in enumerate(members) if m.progress.step == step]
        group = _Group([members[i] for i in part], device, text)
        results.update(zip(part, group.train(checkpoint_every, report, stop)))
    return [results[i] for i in range(len(runs))]


def _member(run: Run, folder: Path, sampler: Sampler, fingerprint: str, text: Text) -> Member:
    """A run ready to train: its folder made safe and its settings recorded, its checkpoint resumed if it fits."""
    real_dirs(folder.parent.parent, folder)  # the stage folder's runs/<id>, through no symbolic link
    _remove_stale_temps(folder)
    atomic_write_json(folder / RUN_CONFIG, {**run.row(), "fingerprint": fingerprint, "data": text.data_id, "tokens": text.vocab.id})
    fresh = Progress(EMA_START * text.vocab.bytes_per_token)
    progress = checkpoint.resume(run, fingerprint, folder, sampler.generator, fresh)
    _record_attempt(folder, progress.step)
    return Member(run, folder, progress, sampler, fingerprint)


def train_run(run: Run, text: Text, run_dir: Path, device: torch.device, **options: Any) -> dict:
    """Train one run alone: `train_runs` with a group of one, and its options."""
    return train_runs([run], text, [run_dir], device, **options)[0]
