"""What a trained cell does with time: how much of its past it uses, how fast it forgets, whether it is stable.

Three measures of one finished byte run, on its held-out windows (rnnsweep.train.held_out_windows):

* memory by context length: bits per byte when the cell sees only the last `k`
  bytes before each scored byte (k = 0: the current byte alone). Two variants.
  `zero`: the state is reset to zero k bytes back (at the window's start if that
  is later); at k = history_size this is exactly the held-out score. It also
  measures warm-up from an untypical zero state, so `substituted` replaces the
  bytes before t - k by bytes from a random place of the split instead: the state
  is a typical one that knows nothing true of the past. `memory_gain_bits` (bpb at
  k = 0 minus bpb at full context) and `memory_horizon` (the smallest k reaching
  90 % of that gain) use the substituted variant.
* sensitivity by lag: the mean norm of the gradient of log p(last byte of a window)
  with respect to the input embedding k steps before it, through the whole window
  (backpropagation through time, for analysis only). `tau_bytes` is the decay time
  of an exponential fit over lags 1 and on; `lag_1pct` the first lag below 1 % of
  lag 0's.
* Lyapunov exponents of the state map driven by held-out text: the state of every
  layer stacked, s_t = F(s_{t-1}, x_t); the exponents are the mean log growth rates
  of the QR method applied to the Jacobians dF/ds, per byte. A negative largest
  exponent (`lyapunov_1`) means a contracting map: it forgets where it started.

The gradients and Jacobians use the line-by-line reference model (rnnsweep.reference)
in float64, with the run's weights; the memory curves use the engine itself, so that
the zero variant at full context reproduces the run's recorded `valid_bpb`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnsweep.data import DataError
from rnnsweep.grid import Design
from rnnsweep.model import ByteModel
from rnnsweep.reference import ReferenceModel, load_engine_state
from rnnsweep.train import held_out_windows

VARIANTS = ("zero", "substituted")
GAIN_SHARE = 0.9  # memory_horizon: the smallest context that reaches this share of the memory gain
FLOOR = 0.01  # lag_1pct: sensitivity below this share of lag 0's
CHUNK = 4096  # sequences run at once: bounds memory, not results


def context_lengths(history_size: int) -> list[int]:
    """0, 1, 2, 4, ... and history_size: the contexts measured (k = history_size is the whole window)."""
    ks, k = [0], 1
    while k < history_size:
        ks.append(k)
        k *= 2
    return ks + [history_size]


def _last_logits(model: ByteModel, inputs: np.ndarray) -> Tensor:
    """The logits after feeding each row of `inputs` (B, L) from a zero state: (B, vocab)."""
    out = []
    for first in range(0, len(inputs), CHUNK):
        part = torch.from_numpy(np.ascontiguousarray(inputs[first:first + CHUNK])).long().to(model.device)
        states, logits = model.initial_state(len(part)), None
        for t in range(part.shape[1]):
            logits, states = model.logits(part[:, t][None], states)
        out.append(logits[0])
    return torch.cat(out)


def _nats(model: ByteModel, inputs: np.ndarray, targets: np.ndarray) -> float:
    logits = _last_logits(model, inputs).double()
    return float(F.cross_entropy(logits, torch.from_numpy(targets).long().to(logits.device), reduction="sum"))


def _prefix_nats(model: ByteModel, windows: np.ndarray, upto: int) -> float:
    """Summed nats of positions 1..upto of every window, each predicted from the window's start (held-out scoring)."""
    text = torch.from_numpy(np.array(windows, dtype=np.int64)).to(model.device)
    total, states = 0.0, model.initial_state(len(windows))
    for j in range(upto):
        logits, states = model.logits(text[:, j][None], states)
        total += float(F.cross_entropy(logits[0].double(), text[:, j + 1], reduction="sum"))
    return total


def memory_bpb(model: ByteModel, windows: np.ndarray, k: int, variant: str, split: np.ndarray,
               rng: np.random.Generator) -> float:
    """Bits per byte over every scored byte of `windows` when the cell sees only the last `k` bytes before it."""
    n, history = windows.shape
    short = min(k + 1, history - 1)  # targets j <= k + 1 see the window's start anyway: held-out scoring
    total = _prefix_nats(model, windows, short)
    for j in range(short + 1, history):
        if variant == "zero":
            inputs = windows[:, j - 1 - k:j]
        else:
            cut = j - 1 - k
            starts = rng.integers(0, len(split) - cut, n)
            inputs = np.concatenate([split[starts[:, None] + np.arange(cut)], windows[:, cut:j]], axis=1)
        total += _nats(model, inputs, windows[:, j])
    return total / (n * (history - 1)) / math.log(2)


@dataclass(frozen=True)
class Memory:
    ks: list[int]
    bpb: dict[str, list[float]]  # variant -> bpb at each k

    @property
    def gain_bits(self) -> float:
        curve = self.bpb["substituted"]
        return curve[0] - curve[-1]

    @property
    def horizon(self) -> int:
        """The smallest k whose substituted bpb reaches GAIN_SHARE of the gain (0 where there is no gain)."""
        curve, gain = self.bpb["substituted"], self.gain_bits
        if gain <= 0:
            return 0
        return next(k for k, b in zip(self.ks, curve) if curve[0] - b >= GAIN_SHARE * gain)


def memory(model: ByteModel, split: np.ndarray, eval_bytes: int, history_size: int, seed: int = 0,
           ks: Sequence[int] | None = None) -> Memory:
    windows = held_out_windows(split, eval_bytes, history_size)
    ks = list(ks if ks is not None else context_lengths(history_size))
    bad = [k for k in ks if not 0 <= k <= history_size]
    if bad:
        raise DataError(f"context lengths {bad} are not within 0..history_size ({history_size})")
    bpb = {v: [memory_bpb(model, windows, k, v, split, np.random.default_rng(seed)) for k in ks] for v in VARIANTS}
    return Memory(ks, bpb)


def reference_of(design: Design, weights: dict[str, Tensor], vocab: int) -> ReferenceModel:
    """The run's weights in the line-by-line model, in float64: for gradients and Jacobians through time."""
    return load_engine_state(ReferenceModel(design, vocab).double(), {k: v.double() for k, v in weights.items()})


def sensitivity(ref: ReferenceModel, windows: np.ndarray) -> np.ndarray:
    """Mean gradient norm of log p(each window's last byte) w.r.t. the input embedding k steps back, k = 0..H-2."""
    text = torch.from_numpy(np.array(windows, dtype=np.int64))
    inputs = [ref.embedded(text[:, t]).detach().requires_grad_() for t in range(text.shape[1] - 1)]
    states = [s.double() for s in ref.initial_state(len(text), torch.device("cpu"))]
    logits = None
    for y in inputs:
        logits, states = ref.step(y, states, detach=False)
    logp = -F.cross_entropy(logits, text[:, -1], reduction="sum")  # rows are independent: one backward serves all
    grads = torch.autograd.grad(logp, inputs, allow_unused=True)
    norms = [torch.zeros(len(text), dtype=torch.float64) if g is None else g.norm(dim=1) for g in grads]
    return torch.stack(norms[::-1]).mean(dim=1).numpy()  # lag 0 first


def decay(norms: np.ndarray) -> tuple[float, float]:
    """(tau_bytes, lag_1pct): the decay time of an exponential fit over lags >= 1 (inf if it does not decay, NaN
    without two positive points), and the first lag whose norm is below FLOOR of lag 0's (NaN if none)."""
    below = np.nonzero(norms < FLOOR * norms[0])[0] if norms[0] > 0 else np.array([1])
    lag = float(below[0]) if len(below) else math.nan
    lags = np.arange(1, len(norms))
    positive = norms[1:] > 0
    if positive.sum() < 2:
        return math.nan, lag
    slope = np.polyfit(lags[positive], np.log(norms[1:][positive]), 1)[0]
    return (-1 / slope if slope < 0 else math.inf), lag


def state_map(ref: ReferenceModel) -> Callable[[Tensor, Tensor], Tensor]:
    """s_t = F(s_{t-1}, x_t) with every layer's state stacked into one vector (one sequence, batch 1)."""
    n, layers = ref.design.state_size, ref.design.n_layers

    def step(state: Tensor, byte: Tensor) -> Tensor:
        states = list(state.view(layers, 1, n))
        _, nxt = ref.step(ref.embedded(byte.view(1)), states, detach=False)
        return torch.cat(nxt, dim=1).view(-1)

    return step


def jacobian(ref: ReferenceModel, state: Tensor, byte: Tensor) -> Tensor:
    """dF/ds at (state, byte): (L·n, L·n)."""
    step = state_map(ref)
    return torch.autograd.functional.jacobian(lambda s: step(s, byte), state)


def qr_exponents(jacobians: Callable[[int], Tensor], steps: int, dim: int, count: int, burn_in: int = 0) -> np.ndarray:
    """The `count` largest Lyapunov exponents of a product of `steps` Jacobians (jacobians(t) is step t's), by the
    QR method: carry an orthonormal frame, re-orthonormalise it each step, average the logs of R's diagonal."""
    q = torch.eye(dim, count, dtype=torch.float64)
    sums = torch.zeros(count, dtype=torch.float64)
    for t in range(steps):
        q, r = torch.linalg.qr(jacobians(t) @ q)
        if t >= burn_in:
            sums += torch.log(torch.abs(torch.diagonal(r)).clamp_min(1e-300))
    return (sums / max(steps - burn_in, 1)).numpy()


def lyapunov(ref: ReferenceModel, text: np.ndarray, count: int = 8, burn_in: int = 20) -> np.ndarray:
    """The largest `count` Lyapunov exponents (nats per byte) of the state map driven by `text`, largest first."""
    dim = ref.design.n_layers * ref.design.state_size
    count = min(count, dim)
    step = state_map(ref)
    state = torch.zeros(dim, dtype=torch.float64)
    data = torch.from_numpy(np.array(text, dtype=np.int64))

    def jacobians(t: int) -> Tensor:
        """Step t's Jacobian at the current state, which then moves on along the text."""
        nonlocal state
        at = jacobian(ref, state, data[t])
        with torch.no_grad():
            state = step(state, data[t])
        return at

    return np.sort(qr_exponents(jacobians, len(text), dim, count, burn_in))[::-1]


@dataclass(frozen=True)
class RunDynamics:
    memory: Memory
    sensitivity: np.ndarray
    tau_bytes: float
    lag_1pct: float
    lyapunov: np.ndarray

    def row(self) -> dict[str, float]:
        return {"memory_gain_bits": self.memory.gain_bits, "memory_horizon": self.memory.horizon,
                "tau_bytes": self.tau_bytes, "lag_1pct": self.lag_1pct,
                **{f"lyapunov_{i + 1}": float(v) for i, v in enumerate(self.lyapunov)}}


def run_dynamics(folder: Path, split: np.ndarray, eval_bytes: int, history_size: int, lyapunov_bytes: int = 500,
                 seed: int = 0) -> RunDynamics:
    """Every measure of one finished byte run (its folder, runs/<id>) on a held-out split."""
    from rnnsweep.sample import load_run  # the run's weights, checked against its record

    model = load_run(folder)
    if model.vocab != 256:
        raise DataError(f"{folder} reads BPE tokens; dynamics are measured on byte runs")
    design = model.designs[0]
    ref = reference_of(design, model.replicate(model.theta, 0), model.vocab)
    windows = held_out_windows(split, eval_bytes, history_size)
    norms = sensitivity(ref, windows)
    tau, lag = decay(norms)
    return RunDynamics(memory(model, split, eval_bytes, history_size, seed), norms, tau, lag,
                       lyapunov(ref, split[:lyapunov_bytes]))
