"""The gated recurrent cell of spec §1 and the byte model of spec §2, forward and backward by hand.

Why by hand: spec §3 detaches the state after every step, so each optimiser
step differentiates a graph only one position deep. At these sizes autograd's
bookkeeping costs as much as the arithmetic for small cells, and for large
ones it computes gradients nobody uses (those of the detached state). Writing
each map's backward out keeps only the products that feed a parameter. The
equivalence tests check values and gradients against the line-by-line
autograd model in `rnnsweep.reference`.

Layout, for speed:

* **Stacked maps.** Maps that read the same input are stacked into one
  matrix: A and B (input gate) both read c; H and the c-parts of G and F read
  c (their h-parts stay separate because h changes between them); O and the
  u-part of P read u (P's y-part stays separate because y is O's output).
  The inputs a stacked map reads sit side by side ([x, s], or the parts of u),
  so its forward product and its weight gradient are one matmul each, which
  runs nearer the matmul rate than one per input. The backward pass forms
  only the input gradients that reach a parameter, each from its column
  block of the weight. Every block is initialised uniform in ±1/sqrt(fan_in)
  of the map it belongs to, exactly like torch.nn.Linear of that map.
* **Replicates.** Every tensor has a leading replicate axis R: weights are
  (R, out, in), activations (R, batch, features), every product a batched
  matmul. Nothing couples replicates, so R seeds of one design (stage 3) train
  as one model, and replicate r computes what a solo run (R = 1) computes.
* **One flat buffer.** All parameters are views into one tensor `theta` and all
  gradients views into `grad` (parameter by parameter, replicate axis inside),
  so the optimiser step is one fused kernel over one tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnsweep.grid import Design

VOCAB = 256

_sigmoid_backward = torch.ops.aten.sigmoid_backward  # (grad, σ(z)) → grad·σ(z)·(1−σ(z))
_silu_backward = torch.ops.aten.silu_backward  # (grad, z) → grad·d silu(z)/dz


def _sigmoid_backward_into(grad: Tensor, out: Tensor, into: Tensor) -> Tensor:
    return torch.ops.aten.sigmoid_backward.grad_input(grad, out, grad_input=into)


def _tanh_backward_into(grad: Tensor, out: Tensor, into: Tensor) -> Tensor:
    return torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=into)


@dataclass(frozen=True)
class Param:
    """One parameter tensor: its shape and the (rows, fan_in) of each map stacked in it."""

    name: str
    shape: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]
    parts: tuple[tuple[str, int], ...] = ()  # (input, columns) side by side in a stacked weight

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _map(name: str, inputs: list[tuple[str, int]], blocks: list[tuple[int, int]]) -> list[Param]:
    """The maps stacked in `blocks`: one weight over the inputs they read, side by side, then one bias."""
    rows, cols = sum(r for r, _ in blocks), sum(c for _, c in inputs)
    return [Param(f"{name}_w", (rows, cols), tuple(blocks), tuple(inputs)), Param(f"{name}_b", (rows,), tuple(blocks))]


def plan(design: Design) -> list[Param]:
    """Every parameter of the model, in initialisation order."""
    D, n = design, design.state_size
    d = n
    # The one-hot affine map's weight, stored transposed as a lookup table (fan_in 256).
    params = [Param("embed_w", (VOCAB, n), ((VOCAB, VOCAB),)), Param("embed_b", (n,), ((n, VOCAB),))]
    u_inputs = [("h", n)] * D.use_new_state + [("s", n)] * D.use_old_state + [("x", d)] * D.use_residual
    u = sum(cols for _, cols in u_inputs)
    for i in range(D.n_layers):
        p = f"cells.{i}."
        if D.use_input_gate:  # [A; B], reading x and s
            params += _map(p + "in", [("x", d), ("s", n)], [(d, d + n), (n, d + n)])
        gates = [(n, d + n)] + [(n, d + 2 * n)] * (D.use_state_gate + D.use_forget_gate)
        params += _map(p + "c", [("x", d), ("s", n)], gates)  # H, then the c-parts of G and F
        if D.use_state_gate:  # h-part of G
            params.append(Param(p + "g_h", (n, n), ((n, d + 2 * n),)))
        if D.use_forget_gate:  # h-part of F
            params.append(Param(p + "f_h", (n, n), ((n, d + 2 * n),)))
        params += _map(p + "u", u_inputs, [(d, u)] + [(d, d + u)] * D.use_output_gate)  # O, u-part of P
        if D.use_output_gate:  # y-part of P
            params.append(Param(p + "p_y", (d, d), ((d, d + u),)))
    return params + _map("head", [("w", n)], [(VOCAB, n)])


def _bound(fan_in: int) -> float:
    return 1.0 / math.sqrt(fan_in)


def initial_weights(design: Design, seed: int) -> dict[str, Tensor]:
    """One replicate's initial parameters: each block uniform in ±1/sqrt(fan_in) of its own map.

    A stacked weight is drawn input part by input part, so the random stream
    (and every run's start) is the one of a layout with one weight per part.
    """
    gen = torch.Generator().manual_seed(seed)

    def blocks(param: Param, cols: tuple[int, ...]) -> Tensor:
        return torch.cat([torch.empty(rows, *cols).uniform_(-_bound(fan_in), _bound(fan_in), generator=gen) for rows, fan_in in param.blocks])

    weights = {}
    for param in plan(design):
        part_cols = [(cols,) for _, cols in param.parts] or [param.shape[1:]]
        weights[param.name] = torch.cat([blocks(param, cols) for cols in part_cols], dim=-1)
    return weights


def count_params(design: Design) -> int:
    return sum(p.numel for p in plan(design))


class _Maps:
    """One layer's parameter (or gradient) views by short name, optionally transposed.

    A stacked weight is there whole (c_w) and by input part (c_x, c_s: its
    column blocks). The views are made once: they stay valid because every
    update is in place.
    """

    def __init__(self, views: dict[str, Tensor], params: list[Param], prefix: str, transposed: bool = False) -> None:
        for param in params:
            if not param.name.startswith(prefix):
                continue
            name, view = param.name[len(prefix) :], views[param.name]
            setattr(self, name, view.mT if transposed and len(param.shape) == 2 else view)
            k = 0
            for part, cols in param.parts:
                block = view[..., k : k + cols]
                setattr(self, f"{name[:-2]}_{part}", block.mT if transposed else block)
                k += cols


def _part(buffer: Tensor, k: int, width: int) -> Tensor:
    """Feature columns k … k+width of a (R, batch, features) buffer, as a view.

    Products are added to such a view out of place, never written into it: a
    batched matmul into a strided output falls back to a copy and a gemm per
    replicate (profiled at width 32: 33 µs against 20 µs).
    """
    return buffer[..., k : k + width]


class Cell:
    """One layer of spec §1 with d == n, on (R, batch, features) tensors.

    A stacked map multiplies its inputs side by side ([x, s] for c; [h, s_in,
    x] for u) in one matmul, and its weight gradient is one matmul too; the
    backward pass computes only the input gradients something uses, each from
    its column block of the weight.
    """

    def __init__(self, design: Design, w: _Maps, wt: _Maps, g: _Maps) -> None:
        self.design, self.n, self.w, self.wt, self.g = design, design.state_size, w, wt, g

    def forward(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, tuple]:
        """(y, next state, what backward needs)."""
        D, n, w = self.design, self.n, self.wt
        xs = c = torch.cat((x, s), 2)  # c = [x, s]
        a = None
        if D.use_input_gate:
            a = torch.baddbmm(w.in_b, xs, w.in_w).sigmoid_()  # [σ(A·c), σ(B·c)]
            c = xs * a  # [x_in, s_in]
        z = torch.baddbmm(w.c_b, c, w.c_w)  # [H·c, G's c-part, F's c-part]
        h0 = torch.tanh(z[..., :n])
        h1, g, f, k = h0, None, None, n
        if D.use_state_gate:
            g = torch.baddbmm(_part(z, k, n), h0, w.g_h).sigmoid_()
            h1 = torch.lerp(s, h0, g)  # g·h + (1 − g)·s
            k += n
        h = h1
        if D.use_forget_gate:
            f = torch.baddbmm(_part(z, k, n), h1, w.f_h).sigmoid_()
            h = f * h1
        parts = [t for t, on in ((h, D.use_new_state), (c[..., n:], D.use_old_state), (x, D.use_residual)) if on]
        u = torch.cat(parts, 2) if len(parts) > 1 else parts[0]
        yz = torch.baddbmm(w.u_b, u, w.u_w)  # [O·u, P's u-part]
        if D.use_output_gate:
            q = torch.baddbmm(_part(yz, n, n), yz[..., :n], w.p_y).sigmoid_()
            y = yz[..., :n] * q
        else:
            q, y = None, F.silu(yz)
        return y, h, (xs, a, c, s, h0, g, h1, f, u, yz, q)

    def backward(self, saved: tuple, dy: Tensor) -> Tensor | None:
        """Write this layer's parameter gradients; return dL/dx, or None where y does not depend on x."""
        D, n, w, g_ = self.design, self.n, self.w, self.g
        xs, a, c, s, h0, g, h1, f, u, yz, q = saved
        if D.use_output_gate:
            y0 = yz[..., :n]
            dq = _sigmoid_backward(dy * y0, q)
            torch.bmm(dq.mT, y0, out=g_.p_y)
            dyz = torch.cat((torch.bmm(dq, w.p_y).addcmul_(dy, q), dq), 2)
        else:
            dyz = _silu_backward(dy, yz)
        torch.sum(dyz, 1, keepdim=True, out=g_.u_b)
        torch.bmm(dyz.mT, u, out=g_.u_w)
        dx = torch.bmm(dyz, w.u_x) if D.use_residual else None
        # The old state reaches a parameter only through the input gate.
        ds_in = torch.bmm(dyz, w.u_s) if D.use_old_state and D.use_input_gate else None
        dx_in = None
        if D.use_new_state:
            dx_in, ds_c = self._backward_gates(torch.bmm(dyz, w.u_h), c, s, h0, g, h1, f)
            if ds_c is not None:
                ds_in = ds_c if ds_in is None else ds_in.add_(ds_c)
        if D.use_input_gate:
            dx_in = self._backward_input_gate(dx_in, ds_in, xs, a)
        if dx is None or dx_in is None:
            return dx_in if dx is None else dx
        return dx.add_(dx_in)

    def _backward_gates(self, dh: Tensor, c, s, h0, g, h1, f) -> tuple[Tensor, Tensor | None]:
        """Through the forget gate, state gate and candidate: (dL/dx_in, dL/ds_in or None if unused)."""
        D, n, w, g_ = self.design, self.n, self.w, self.g
        dz = dh.new_empty(*dh.shape[:2], n * (1 + D.use_state_gate + D.use_forget_gate))
        k = dz.shape[2]
        if D.use_forget_gate:
            k -= n
            df = _sigmoid_backward_into(dh * h1, f, _part(dz, k, n))
            torch.bmm(df.mT, h1, out=g_.f_h)
            dh = torch.bmm(df, w.f_h).addcmul_(dh, f)
        if D.use_state_gate:
            k -= n
            dg = _sigmoid_backward_into(dh * (h0 - s), g, _part(dz, k, n))
            torch.bmm(dg.mT, h0, out=g_.g_h)
            dh = torch.bmm(dg, w.g_h).addcmul_(dh, g)
        _tanh_backward_into(dh, h0, _part(dz, 0, n))
        torch.sum(dz, 1, keepdim=True, out=g_.c_b)
        torch.bmm(dz.mT, c, out=g_.c_w)
        ds_in = torch.bmm(dz, w.c_s) if D.use_input_gate else None
        return torch.bmm(dz, w.c_x), ds_in

    def _backward_input_gate(self, dx_in: Tensor | None, ds_in: Tensor | None, xs, a) -> Tensor:
        """x_in = σ(A·c)⊙x, s_in = σ(B·c)⊙s with c = xs = [x, s]: gradients of A and B; return dL/dx."""
        w, g_, n = self.w, self.g, self.n
        x, s = xs[..., :n], xs[..., n:]
        some = dx_in if dx_in is not None else ds_in
        da = some.new_zeros(*some.shape[:2], 2 * n)
        if dx_in is not None:
            _sigmoid_backward_into(dx_in * x, a[..., :n], da[..., :n])
        if ds_in is not None:
            _sigmoid_backward_into(ds_in * s, a[..., n:], da[..., n:])
        torch.sum(da, 1, keepdim=True, out=g_.in_b)
        torch.bmm(da.mT, xs, out=g_.in_w)
        dx = torch.bmm(da, w.in_x)
        return dx if dx_in is None else dx.addcmul_(dx_in, a[..., :n])


class ByteModel:
    """Embedding → stacked cells → 256 logits, one byte position per call (spec §2), for R replicates.

    `seeds` gives one initialisation seed per replicate. States are lists (one
    per layer) of (R, batch, n) tensors; bytes and targets are (R, batch).

    `compute_dtype` (default: `dtype`) is the precision of the step's arithmetic.
    With bfloat16 the parameters stay float32 (the optimiser's master copy):
    each step casts them to a bfloat16 working copy in one pass, runs forward
    and backward in bfloat16 with the softmax and loss in float32, and casts
    the gradients back — what autocast does, in two casts per step.
    """

    def __init__(
        self,
        design: Design,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.design, self.replicates = design, len(seeds)
        self.plan = plan(design)
        total = self.replicates * sum(p.numel for p in self.plan)
        self.theta = torch.empty(total, device=device, dtype=dtype)
        self.grad = torch.zeros_like(self.theta)
        for r, seed in enumerate(seeds):
            self.load_replicate(r, initial_weights(design, seed))
        mixed = compute_dtype not in (None, dtype)
        self._work = torch.empty_like(self.theta, dtype=compute_dtype) if mixed else self.theta
        self._work_grad = torch.zeros_like(self._work) if mixed else self.grad
        self.params, self.grads = self.views(self._work), self.views(self._work_grad)
        self.cells = [
            Cell(design, *(_Maps(self.params, self.plan, f"cells.{i}.", t) for t in (False, True)), _Maps(self.grads, self.plan, f"cells.{i}."))
            for i in range(design.n_layers)
        ]
        self._head_wt = self.params["head_w"].mT
        # Row offsets that make replicate r's byte b pick row r·256 + b of the stacked lookup tables.
        self._row0 = torch.arange(self.replicates, device=device).unsqueeze(1) * VOCAB
        self._ones: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.theta.device

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._work.dtype

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Name → (R, *shape) view of a buffer laid out like `theta`; biases as (R, 1, rows) for broadcasting."""
        out, offset, R = {}, 0, self.replicates
        for p in self.plan:
            shape = (R, 1, p.shape[0]) if len(p.shape) == 1 else (R, *p.shape)
            out[p.name] = flat[offset : offset + R * p.numel].view(shape)
            offset += R * p.numel
        return out

    def replicate(self, flat: Tensor, r: int) -> dict[str, Tensor]:
        """Replicate r's part of a buffer laid out like `theta`, as a state dict of copies."""
        return {p.name: view[r].reshape(p.shape).clone() for p, view in zip(self.plan, self.views(flat).values())}

    def load_replicate(self, r: int, weights: dict[str, Tensor], flat: Tensor | None = None) -> None:
        """Copy a state dict into replicate r of `flat` (default: the parameters)."""
        views = self.views(self.theta if flat is None else flat)
        if weights.keys() != views.keys():
            raise ValueError(f"parameter names differ: {sorted(set(weights) ^ set(views))}")
        for name, view in views.items():
            view[r].copy_(weights[name].reshape(view[r].shape))

    def initial_state(self, batch_size: int) -> list[Tensor]:
        shape = (self.replicates, batch_size, self.design.state_size)
        return [torch.zeros(shape, device=self.device, dtype=self.compute_dtype) for _ in self.cells]

    def _rows(self, byte: Tensor) -> Tensor:
        """Rows of the stacked (R·256, n) lookup table: replicate r's byte b is row r·256 + b."""
        return byte if self.replicates == 1 else byte + self._row0

    def forward(self, rows: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor], list[tuple], Tensor]:
        """(logits, next states, per-layer saved tensors, last layer output) from lookup-table rows."""
        if self._work is not self.theta:
            self._work.copy_(self.theta)
        table = self.params["embed_w"].view(-1, self.design.state_size)
        x = table.index_select(0, rows.view(-1)).view(*rows.shape, -1).add_(self.params["embed_b"])
        saved, next_states = [], []
        for cell, s in zip(self.cells, states):
            x, h, ctx = cell.forward(x, s)
            saved.append(ctx)
            next_states.append(h)
        return torch.baddbmm(self.params["head_b"], x, self._head_wt), next_states, saved, x

    def logits(self, byte: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        logits, next_states, _, _ = self.forward(self._rows(byte), states)
        return logits.to(self.theta.dtype), next_states

    def train_step(self, byte: Tensor, target: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Forward, then the gradient of each replicate's mean cross-entropy into `grad`; (losses (R,), next states)."""
        rows = self._rows(byte)
        logits, next_states, saved, y = self.forward(rows, states)
        batch = byte.shape[1]
        picked = target.unsqueeze(2)
        # One softmax serves both the loss and its gradient (softmax − one-hot) / batch.
        probs = torch.softmax(logits, 2, dtype=self.theta.dtype)
        loss = probs.gather(2, picked).log_().sum((1, 2)).div_(-batch)  # the mean's own sum and division
        dlogits = probs.scatter_add_(2, picked, self._minus_one(picked)).div_(batch).to(y.dtype)
        grads = self.grads
        torch.bmm(dlogits.mT, y, out=grads["head_w"])
        torch.sum(dlogits, 1, keepdim=True, out=grads["head_b"])
        dy = torch.bmm(dlogits, self.params["head_w"])
        for cell, ctx in zip(reversed(self.cells), reversed(saved)):
            dy = cell.backward(ctx, dy)
            if dy is None:
                break  # nothing below this layer reaches the loss
        if dy is not None:
            torch.sum(dy, 1, keepdim=True, out=grads["embed_b"])
            table = grads["embed_w"].view(-1, self.design.state_size).zero_()
            table.index_put_((rows.view(-1),), dy.reshape(-1, dy.shape[2]), accumulate=True)
        if self._work_grad is not self.grad:
            self.grad.copy_(self._work_grad)
        return loss, next_states

    def _minus_one(self, like: Tensor) -> Tensor:
        if self._ones is None or self._ones.shape != like.shape:
            self._ones = torch.full(like.shape, -1.0, device=self.device, dtype=self.theta.dtype)
        return self._ones
