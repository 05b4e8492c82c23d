"""What trained cells do with time: how much of their past they use, how fast they forget, where their state goes.

Every measure runs on many runs at once: the runs of one shape (depth and width)
load into one superset model (rnnsweep.model.ByteModel), one replicate each, as
training batches them. On held-out windows (rnnsweep.data.held_out_windows):

* memory by context length: bits per byte when the cell sees only the current
  byte and the `k` before it. Two variants. `zero`: the state is reset to zero
  k bytes back; `substituted`: it is replaced by another window's state at the
  same position, a typical state that knows nothing true of this past (a zero
  state also measures warm-up from an untypical start). A byte whose window
  starts within its context is predicted from the window's start, as held-out
  scoring does, so at k = history_size both variants are the recorded score.
  One pass per cut point serves every k: the cell restarted at position p and
  run on predicts byte p + k + 1 from exactly k + 1 bytes.
  `memory_gain_bits` is substituted bpb at k = 0 minus bpb at full context;
  `memory_horizon` the smallest k reaching 90 % of that gain.
* sensitivity by lag: the mean norm of the gradient of log p(each window's last
  byte) with respect to the embedded input k steps before it, through the whole
  window (backpropagation through time, for analysis only). `tau_bytes` is the
  decay time of an exponential fit over lags >= 1; `lag_1pct` the first lag
  below 1 % of lag 0.
* Lyapunov exponents of the state map s_t = F(s_{t-1}, x_t) (every layer's
  state stacked) driven by held-out text: the mean log growth rates of the QR
  method, with each step's Jacobian-times-frame by forward-mode differentiation
  (the frame's columns ride in the batch), along PIECES stretches of the text
  side by side. `lyapunov_1 < 0`: a contracting map.
* attractors: from random states, the cell run on one input byte repeated;
  where each start ends: a fixed point, a cycle of period p, or irregular.

Everything runs in the model's precision: the runs' own (float32) in a study,
so the zero variant at full context reproduces the recorded `valid_bpb`;
float64 where the tests check Jacobians against finite differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor

from rnnsweep.data import DataError
from rnnsweep.model import ByteModel

VARIANTS = ("zero", "substituted")
GAIN_SHARE = 0.9  # memory_horizon: the smallest context that reaches this share of the memory gain
FLOOR = 0.01  # lag_1pct: sensitivity below this share of lag 0's
ENDINGS = ("fixed", "cycle", "irregular")  # where an attractor start ends
#: Attractor classification: a state within this (root-mean-square per unit) of itself p steps back repeats.
REPEAT_TOL = 1e-6
MAX_PERIOD = 32


def context_lengths(history_size: int) -> list[int]:
    """0, 1, 2, 4, ... and history_size: the contexts reported (k = history_size is the whole window)."""
    ks, k = [0], 1
    while k < history_size:
        ks.append(k)
        k *= 2
    return ks + [history_size]


def check_contexts(ks: Sequence[int], history_size: int) -> None:
    bad = [k for k in ks if not 0 <= k <= history_size]
    if bad:
        raise DataError(f"context lengths {bad} are not within 0..history_size ({history_size})")


def _text(windows: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(windows, dtype=np.int64))


def _nats(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each row in the logits' precision, as held-out scoring takes it: logits (R, B, V), targets
    (B,) -> (R, B) float64, for sums."""
    return F.cross_entropy(logits.transpose(1, 2), targets.expand(len(logits), -1), reduction="none").double()


def _feed(model: ByteModel, byte: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One position for every replicate: the same bytes (B,) to each."""
    return model.logits(byte.expand(model.replicates, -1), states)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of 0..n-1 that moves every index (n >= 2): each window's partner is another window."""
    if n < 2:
        raise DataError("the substituted memory needs at least two held-out windows; raise the dynamics eval_bytes")
    return (np.arange(n) + rng.integers(1, n)) % n if n == 2 else _shuffled(n, rng)


def _shuffled(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        order = rng.permutation(n)
        if np.all(order != np.arange(n)):
            return order


@dataclass(frozen=True)
class FromStart:
    """Held-out windows run from a zero state, as held-out scoring runs them: what memory and sensitivity share."""

    states: list[list[Tensor]]  # before position t = 0 .. H-2: every layer's state (R, n, width), detached
    nats: Tensor  # (R, H-1) float64: byte t + 1 of every window predicted from its start, summed over windows
    sensitivity: np.ndarray  # (R, H-1): mean gradient norm of log p(each window's last byte) by lag, lag 0 first


def from_start(model: ByteModel, windows: np.ndarray) -> FromStart:
    """One pass over the windows, the embedded inputs kept as leaves: one backward from the last bytes gives the
    sensitivity at every lag (replicates and windows are independent, so one backward serves all)."""
    text = _text(windows)
    with torch.enable_grad():
        inputs = [model.embed(text[:, t].expand(model.replicates, -1)).detach().requires_grad_()
                  for t in range(text.shape[1] - 1)]
        states, before, nats, logits = model.initial_state(len(text)), [], [], None
        for t, x in enumerate(inputs):
            before.append([state.detach() for state in states])
            logits, states, _, _ = model.from_embedded(x, states)
            nats.append(_nats(logits.detach(), text[:, t + 1]).sum(1))
        grads = torch.autograd.grad(-_nats(logits, text[:, -1]).sum(), inputs, allow_unused=True)
    norms = [torch.zeros(model.replicates) if g is None else g.norm(dim=2).mean(dim=1) for g in grads]
    return FromStart(before, torch.stack(nats, 1), torch.stack(norms[::-1], dim=1).double().numpy())


@torch.no_grad()
def memory_curves(model: ByteModel, windows: np.ndarray, ks: Sequence[int], rng: np.random.Generator,
                  start: FromStart | None = None) -> dict[str, np.ndarray]:
    """variant -> (R, len(ks)) bits per byte at each context length k (k >= H - 2: every byte sees its window's
    start, the held-out score). Cells restart at every position and run as far as the largest k < H - 2.
    `start`: the windows' pass from their start, if already made."""
    n, history = windows.shape
    text = _text(windows)
    start = start or from_start(model, windows)
    from_first = start.nats.cumsum(1)  # (R, H-1): bytes 1..k+1, which see their window's start
    partner = torch.from_numpy(derangement(n, rng))
    # Rows (p, variant, w) for the cuts p = 1..H-2, p-major, so the rows still running at each k are a prefix.
    states = [torch.stack([torch.stack([torch.zeros_like(state), state[:, partner]], 1)
                           for state in (start.states[p][layer] for p in range(1, history - 1))], 1).flatten(1, 3)
              for layer in range(model.layout.n_layers)]  # (R, (H-2)·2·n, width)
    last = max([k for k in ks if k < history - 2], default=-1)
    restarted = torch.zeros(model.replicates, last + 1, len(VARIANTS), dtype=torch.float64)
    for part, reps in _restart_paths(model):
        restarted[reps] = _restart(part, text, [state[reps] for state in states], last)
    out = {}
    for v, variant in enumerate(VARIANTS):
        nats = [restarted[:, k, v] + from_first[:, k] if k <= last else from_first[:, -1] for k in ks]
        out[variant] = (torch.stack(nats, 1) / (n * (history - 1)) / math.log(2)).numpy()
    return out


def _restart(model: ByteModel, text: Tensor, states: list[Tensor], last: int) -> Tensor:
    """(R, last + 1, variants) nats of the restarted rows (p, variant, w), run from their cuts for k = 0 .. last."""
    n, history = text.shape
    out = []
    for k in range(last + 1):
        cuts = history - 2 - k  # p + k + 1 <= H - 1: byte p + k + 1 is predicted from k + 1 bytes
        states = [state[:, :cuts * 2 * n] for state in states]
        logits, states = _feed(model, _per_variant(text[:, k + 1:history - 1]), states)
        out.append(_nats(logits, _per_variant(text[:, k + 2:history])).view(-1, cuts, 2, n).sum((1, 3)))
    return torch.stack(out, 1) if out else torch.zeros(model.replicates, 0, len(VARIANTS), dtype=torch.float64)


#: From this width on, the restarted rows of a superset group run on each design's own path: their products are
#: bound by arithmetic, and a design computes only its own maps (at 64, 1.6x faster than the superset's every map;
#: at 16 the superset's one product per map is 2.6x faster than many small ones: benchmarks/README.md).
DESIGN_PATH_WIDTH = 64


def _restart_paths(model: ByteModel) -> list[tuple[ByteModel, Tensor]]:
    """(model, its replicates' indices) to run the restarted rows on: the superset model itself, or one model per
    design on the design path, with the replicates' own weights."""
    designs = model.designs
    if len(set(designs)) == 1 or model.layout.state_size < DESIGN_PATH_WIDTH:
        return [(model, torch.arange(model.replicates))]
    paths = []
    for design in dict.fromkeys(designs):
        reps = [r for r, d in enumerate(designs) if d == design]
        own = ByteModel(design, [0] * len(reps), dtype=model.theta.dtype, compute_dtype=model.compute_dtype,
                        vocab=model.vocab, weights=[model.replicate(model.theta, r) for r in reps])
        paths.append((own, torch.tensor(reps)))
    return paths


def _per_variant(columns: Tensor) -> Tensor:
    """Bytes (n, P) of P cuts as rows (p, variant, w): each cut's bytes for both variants."""
    return columns.T.unsqueeze(1).expand(-1, len(VARIANTS), -1).reshape(-1)


def memory_gain(substituted: np.ndarray) -> np.ndarray:
    """Bits per byte the past is worth: bpb at k = 0 minus at full context, per replicate (curves from k = 0 to full)."""
    return substituted[:, 0] - substituted[:, -1]


def memory_horizon(substituted: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """The smallest k whose bpb reaches GAIN_SHARE of the gain (0 where there is no gain), per replicate."""
    gain = memory_gain(substituted)
    reached = substituted[:, :1] - substituted >= GAIN_SHARE * gain[:, None]
    return np.where(gain > 0, np.asarray(ks)[reached.argmax(axis=1)], 0)


def sensitivity(model: ByteModel, windows: np.ndarray) -> np.ndarray:
    """(R, H - 1): the mean gradient norm of log p(each window's last byte) w.r.t. the embedded input k steps back."""
    return from_start(model, windows).sensitivity


def decay(norms: np.ndarray) -> tuple[float, float]:
    """(tau_bytes, lag_1pct) of one sensitivity curve: the decay time of an exponential fit over lags >= 1 (inf if it
    does not decay, NaN without two positive points), and the first lag below FLOOR of lag 0's (NaN if none)."""
    below = np.nonzero(norms < FLOOR * norms[0])[0] if norms[0] > 0 else np.array([1])
    lag = float(below[0]) if len(below) else math.nan
    lags = np.arange(1, len(norms))
    positive = norms[1:] > 0
    if positive.sum() < 2:
        return math.nan, lag
    slope = np.polyfit(lags[positive], np.log(norms[1:][positive]), 1)[0]
    return (-1 / slope if slope < 0 else math.inf), lag


def _split_state(model: ByteModel, state: Tensor) -> list[Tensor]:
    return list(state.split(model.layout.state_size, dim=2))


def state_step(model: ByteModel, state: Tensor, byte: Tensor) -> Tensor:
    """The state map: every layer's state stacked, (R, B, L·n), one position on bytes (B,)."""
    _, nxt = _feed(model, byte, _split_state(model, state))
    return torch.cat(nxt, dim=2)


def jacobian_times(model: ByteModel, state: Tensor, byte: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
    """(next states (R, P, L·n), dF/ds · frame (R, P, L·n, m)) of P states (R, P, L·n) on their bytes (P,), for a
    frame of m tangent vectors at each (R, P, L·n, m): forward-mode differentiation, the P·m vectors side by side
    in the batch."""
    reps, pieces, dim, m = frame.shape
    with fwad.dual_level():
        primal = state.unsqueeze(2).expand(-1, -1, m, -1).reshape(reps, pieces * m, dim).contiguous()
        dual = fwad.make_dual(primal, frame.mT.reshape(reps, pieces * m, dim).contiguous())
        nxt, tangent = fwad.unpack_dual(state_step(model, dual, byte.repeat_interleave(m)))
    return nxt.view(reps, pieces, m, dim)[:, :, 0].detach(), tangent.view(reps, pieces, m, dim).mT


def qr_exponents(jacobian_times_frame, steps: int, frame: Tensor, burn_in: int = 0) -> np.ndarray:
    """The Lyapunov exponents of products of `steps` maps, by the QR method: carry orthonormal frames (R, ..., dim,
    m), apply step t's Jacobians to them (jacobian_times_frame(t, frame)), re-orthonormalise, and average the logs
    of R's diagonal after `burn_in`, over steps and over the frames of a replicate. (R, m), largest first."""
    sums = torch.zeros(*frame.shape[:-2], frame.shape[-1], dtype=torch.float64)
    for t in range(steps):
        frame, r = torch.linalg.qr(jacobian_times_frame(t, frame))
        if t >= burn_in:
            sums += torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs().double().clamp_min(1e-300))
    exponents = (sums.reshape(len(sums), -1, sums.shape[-1]).mean(1) / max(steps - burn_in, 1)).numpy()
    return -np.sort(-exponents, axis=1)


#: The Lyapunov text is cut into this many pieces, driven side by side, each with its own burn-in: a step reads
#: every weight for a few rows, so two trajectories of half the length cost about half of one.
PIECES = 2


def lyapunov(model: ByteModel, text: np.ndarray, count: int = 8, burn_in: int = 20) -> np.ndarray:
    """(R, min(count, L·n)): the largest Lyapunov exponents (nats per byte) of the state map driven by `text`, cut
    into PIECES trajectories from a zero state (their exponents averaged)."""
    dim = model.layout.n_layers * model.layout.state_size
    count, pieces = min(count, dim), min(PIECES, len(text))
    length = len(text) // pieces
    data = torch.from_numpy(np.array(text[:pieces * length], dtype=np.int64).reshape(pieces, length))
    state = torch.zeros(model.replicates, pieces, dim, dtype=model.compute_dtype)
    frame = torch.eye(dim, count, dtype=model.compute_dtype).expand(model.replicates, pieces, -1, -1)

    def step(t: int, frame: Tensor) -> Tensor:
        nonlocal state
        state, moved = jacobian_times(model, state, data[:, t], frame)
        return moved

    return qr_exponents(step, length, frame, min(burn_in, length // 2))


@torch.no_grad()
def orbit(model: ByteModel, byte: Tensor, steps: int, keep: int, seed: int = 0) -> Tensor:
    """(R, B, keep, L·n): the last `keep` of `steps` states from uniform random states in [-1, 1], each of the B
    orbits driven by its own input byte (B,) repeated at every step."""
    dim = model.layout.n_layers * model.layout.state_size
    gen = torch.Generator().manual_seed(seed)
    state = torch.rand(model.replicates, len(byte), dim, generator=gen, dtype=torch.float64).mul(2).sub(1)
    state, tail = state.to(model.compute_dtype), []
    for t in range(steps):
        state = state_step(model, state, byte)
        if t >= steps - keep:
            tail.append(state.double())
    return torch.stack(tail, dim=2)


def period(tail: Tensor) -> Tensor:
    """The smallest p <= MAX_PERIOD with an orbit's last state within REPEAT_TOL (root mean square per unit) of its
    state p steps back, 0 where there is none, for tails (..., MAX_PERIOD + 1, dim) of orbits' last states."""
    last = tail[..., -1:, :]
    distance = (tail[..., :-1, :] - last).pow(2).mean(-1).sqrt().flip(-1)  # (..., MAX_PERIOD): p = 1, 2, ...
    repeats = distance < REPEAT_TOL
    return torch.where(repeats.any(-1), repeats.int().argmax(-1) + 1, 0)


def ending(p: int) -> str:
    """What a period means: 1 a fixed point, more a cycle, 0 (no repeat within MAX_PERIOD) irregular."""
    return ENDINGS[0] if p == 1 else ENDINGS[1] if p > 1 else ENDINGS[2]


@torch.no_grad()
def trajectory(model: ByteModel, text: np.ndarray) -> np.ndarray:
    """(len(text), L·n): the state of replicate 0 after each byte of `text`, from a zero state."""
    data = torch.from_numpy(np.array(text, dtype=np.int64))
    state = torch.zeros(model.replicates, 1, model.layout.n_layers * model.layout.state_size, dtype=model.compute_dtype)
    out = []
    for t in range(len(data)):
        state = state_step(model, state, data[t:t + 1])
        out.append(state[0, 0].double())
    return torch.stack(out).numpy()


@dataclass(frozen=True)
class Measured:
    """The measures of R runs: curves by context length and by lag, and one row of numbers per run."""

    ks: list[int]  # the context lengths of the memory curves, the last the full window
    memory: dict[str, np.ndarray]  # variant -> (R, len(ks)) bpb
    sensitivity: np.ndarray  # (R, H - 1) by lag
    lyapunov: np.ndarray  # (R, m) largest first

    def rows(self) -> list[dict[str, float]]:
        sub = self.memory["substituted"]
        gains, horizons = memory_gain(sub), memory_horizon(sub, self.ks)
        out = []
        for r in range(len(sub)):
            tau, lag = decay(self.sensitivity[r])
            out.append({
                "memory_gain_bits": float(gains[r]), "memory_horizon": int(horizons[r]),
                "bpb_k0_zero": float(self.memory["zero"][r, 0]), "bpb_k0_substituted": float(sub[r, 0]),
                "bpb_full": float(sub[r, -1]), "tau_bytes": tau, "lag_1pct": lag,
                **{f"lyapunov_{i + 1}": float(v) for i, v in enumerate(self.lyapunov[r])},
            })
        return out


def measure(model: ByteModel, windows: np.ndarray, ks: Sequence[int], lyapunov_text: np.ndarray, exponents: int,
            seed: int = 0) -> Measured:
    """Every per-run measure of a model's replicates."""
    check_contexts(ks, windows.shape[1])
    ks = sorted(set(ks) - {windows.shape[1]}) + [windows.shape[1]]
    start = from_start(model, windows)
    return Measured(ks, memory_curves(model, windows, ks, np.random.default_rng(seed), start), start.sensitivity,
                    lyapunov(model, lyapunov_text, exponents))
