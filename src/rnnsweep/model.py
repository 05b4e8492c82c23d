"""The gated recurrent cell and the byte model (docs/study.md §1–2), forward and backward by hand.

Why by hand: the state is detached after every step, so each optimiser step
differentiates a graph one position deep. At these sizes autograd's
bookkeeping costs as much as the arithmetic for small cells, and for large
ones it computes gradients nobody uses (those of the detached state). Writing
each map's backward out keeps only the products that feed a parameter. The
equivalence tests check values and gradients against the line-by-line
autograd model in `rnnsweep.reference`.

How it is laid out, for speed:

* **Stacked maps.** Maps that read the same input share one weight: A and B
  (input gate) both read c; H and the c-parts of G and F read c (their
  h-parts stay apart because h changes between them); O and the u-part of P
  read u (P's y-part stays apart because y is O's output). The inputs a
  stacked map reads sit side by side ([x, s], or the parts of u), so its
  forward product and its weight gradient are one matmul each. `Param` names
  every row block (a map) and column block (an input) of a weight: that one
  offset table is what the forward pass slices, what the backward pass
  writes into, and what initialisation and the superset layout read.
* **Replicates.** Every tensor has a leading replicate axis R: weights are
  (R, out, in), activations (R, batch, features), every product a batched
  matmul. Nothing couples replicates, so R runs train as one model and
  replicate r computes what a model of that one run computes.
* **Two paths.** On the *design* path every replicate has the same design and
  the layout is that design: only its maps exist. On the *superset* path the
  replicates may be any designs of one shape (depth, width): the layout has
  every map, and per-replicate switch masks make a part that is off compute
  exactly what its absence computes (a gate that is off is 1, a part of u
  that is off is 0, an output gate that is off leaves swish). Each design's
  weights sit in its blocks of the superset; the rest stays 0 and gets a
  gradient of exactly 0, so Adam never moves it.
* **One flat buffer.** All parameters are views into one tensor `theta` and all
  gradients views into `grad` (parameter by parameter, replicate axis inside),
  so the optimiser step is one fused kernel over one tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnsweep.design import BYTE_VOCAB, SWITCHES, Design

VOCAB = BYTE_VOCAB  # the byte vocabulary; a model may take another (token ids 0 .. vocab-1)

_sigmoid_backward = torch.ops.aten.sigmoid_backward  # (grad, σ(z)) → grad·σ(z)·(1−σ(z))
_silu_backward = torch.ops.aten.silu_backward  # (grad, z) → grad·d silu(z)/dz


def _sigmoid_backward_into(grad: Tensor, out: Tensor, into: Tensor) -> Tensor:
    return torch.ops.aten.sigmoid_backward.grad_input(grad, out, grad_input=into)


def _tanh_backward_into(grad: Tensor, out: Tensor, into: Tensor) -> Tensor:
    return torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=into)


# --------------------------------------------------------------------------- parameters and their offsets


@dataclass(frozen=True)
class Param:
    """One parameter tensor: its row blocks (one per map stacked in it) and column blocks (one per input).

    `blocks` are (map, rows, fan_in) from the top; `parts` are (input, columns)
    from the left, empty for a bias and the lookup table. `rows(map)` and
    `cols(input)` are the offset table both passes and the superset layout use.
    """

    name: str
    shape: tuple[int, ...]
    blocks: tuple[tuple[str, int, int], ...]
    parts: tuple[tuple[str, int], ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def maps(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.blocks)

    def rows(self, map_name: str) -> slice:
        return _offset([(name, rows) for name, rows, _ in self.blocks], map_name)

    def cols(self, input_name: str) -> slice:
        return _offset(self.parts, input_name)


def _offset(sizes: Sequence[tuple[str, int]], wanted: str) -> slice:
    """The slice of block `wanted` among named blocks of the given sizes, side by side."""
    start = 0
    for name, size in sizes:
        if name == wanted:
            return slice(start, start + size)
        start += size
    raise KeyError(wanted)


def _map(name: str, inputs: list[tuple[str, int]], blocks: list[tuple[str, int, int]]) -> list[Param]:
    """Maps (map, rows, fan_in) stacked over the inputs they read side by side: one weight, then one bias."""
    rows, cols = sum(r for _, r, _ in blocks), sum(c for _, c in inputs)
    return [Param(f"{name}_w", (rows, cols), tuple(blocks), tuple(inputs)), Param(f"{name}_b", (rows,), tuple(blocks))]


#: The inputs of the output map in docs/study.md's order (§1), each with the switch that puts it in u.
U_PARTS = {"h": "use_new_state", "s": "use_old_state", "x": "use_residual"}


def _u_parts(design: Design) -> list[tuple[str, int]]:
    """The inputs of the output map that a design has: h (new state), s_in (old state), x (residual)."""
    return [(part, design.state_size) for part, switch in U_PARTS.items() if getattr(design, switch)]


def plan(design: Design, vocab: int = VOCAB) -> list[Param]:
    """Every parameter of the model over `vocab` symbols, in initialisation order, with each map's rows and fan_in (d == n)."""
    D, n = design, design.state_size
    u = _u_parts(design)
    dim_u = sum(cols for _, cols in u)
    # The one-hot affine map's weight, stored transposed as a lookup table (fan_in vocab).
    params = [Param("embed_w", (vocab, n), (("embed", vocab, vocab),)), Param("embed_b", (n,), (("embed", n, vocab),))]
    for i in range(D.n_layers):
        p = f"cells.{i}."
        if D.use_input_gate:  # A, B: c = [x, s] → d, n
            params += _map(p + "in", [("x", n), ("s", n)], [("A", n, 2 * n), ("B", n, 2 * n)])
        # H reads c; G and F read [c, h] (fan_in d + 2n): their c-parts stack under H, their h-parts stand alone.
        gates = [("H", n, 2 * n)] + [("G", n, 3 * n)] * D.use_state_gate + [("F", n, 3 * n)] * D.use_forget_gate
        params += _map(p + "c", [("x", n), ("s", n)], gates)
        if D.use_state_gate:
            params.append(Param(p + "g_h", (n, n), (("G", n, 3 * n),), (("h", n),)))
        if D.use_forget_gate:
            params.append(Param(p + "f_h", (n, n), (("F", n, 3 * n),), (("h", n),)))
        # O reads u; P reads [y, u] (fan_in d + dim u): its u-part stacks under O, its y-part stands alone.
        params += _map(p + "u", u, [("O", n, dim_u)] + [("P", n, n + dim_u)] * D.use_output_gate)
        if D.use_output_gate:
            params.append(Param(p + "p_y", (n, n), (("P", n, n + dim_u),), (("y", n),)))
    return params + _map("head", [("y", n)], [("head", vocab, n)])


def _bound(fan_in: int) -> float:
    return 1.0 / math.sqrt(fan_in)


def initial_weights(design: Design, seed: int, vocab: int = VOCAB) -> dict[str, Tensor]:
    """One run's initial parameters: each block uniform in ±1/sqrt(fan_in) of its own map, like nn.Linear.

    A stacked weight is drawn input part by input part, so the random stream
    (and every run's start) is the one of a layout with one weight per part.
    """
    gen = torch.Generator().manual_seed(seed)

    def blocks(param: Param, cols: tuple[int, ...]) -> Tensor:
        return torch.cat([torch.empty(rows, *cols).uniform_(-_bound(f), _bound(f), generator=gen) for _, rows, f in param.blocks])

    weights = {}
    for param in plan(design, vocab):
        part_cols = [(cols,) for _, cols in param.parts] or [param.shape[1:]]
        weights[param.name] = torch.cat([blocks(param, cols) for cols in part_cols], dim=-1)
    return weights


def count_params(design: Design, vocab: int = VOCAB) -> int:
    return sum(p.numel for p in plan(design, vocab))


def superset_layout(design: Design) -> Design:
    """The layout of the superset path for a design's shape: every part switched on."""
    return design.replace(**dict.fromkeys(SWITCHES, True))


def _placement(design: Design, layout: Design, device: torch.device, vocab: int) -> dict[str, tuple]:
    """Where each of a design's parameters sits in a layout's: name → index into one replicate's view.

    A design's parameter holds a subset of the layout's row blocks (maps) and
    column blocks (inputs) of the same names, found through both offset
    tables. Weights are indexed (rows, cols) in their (out, in) view; biases
    (0, rows) in their (1, out) view.
    """
    home = {p.name: p for p in plan(layout, vocab)}

    def span(slices) -> Tensor:
        return torch.cat([torch.arange(part.start, part.stop, device=device) for part in slices])

    out = {}
    for param in plan(design, vocab):
        rows = span(home[param.name].rows(m) for m in param.maps)
        if len(param.shape) == 1:
            out[param.name] = (0, rows)
        else:
            whole = (slice(0, param.shape[1]),)  # the lookup table: all its columns
            cols = span(home[param.name].cols(i) for i, _ in param.parts) if param.parts else span(whole)
            out[param.name] = (rows.unsqueeze(1), cols)
    return out


# --------------------------------------------------------------------------- one layer


@dataclass
class LayerParams:
    """One layer's parameters (or their gradients), by map, as views of the flat buffer.

    Weights are (R, out, in), biases (R, 1, out); a map that the layout lacks is None.
    """

    in_w: Tensor | None  # [A; B]      (R, 2n, 2n)   reads [x, s]
    in_b: Tensor | None
    c_w: Tensor  # [H; G_c; F_c]          (R, k·n, 2n)  reads c = [x_in, s_in]
    c_b: Tensor
    g_h: Tensor | None  # G's h-part      (R, n, n)
    f_h: Tensor | None  # F's h-part      (R, n, n)
    u_w: Tensor  # [O; P_u]               (R, n or 2n, dim u)  reads u = [h, s_in, x]
    u_b: Tensor
    p_y: Tensor | None  # P's y-part      (R, n, n)

    @classmethod
    def of(cls, views: dict[str, Tensor], layer: int) -> "LayerParams":
        prefix = f"cells.{layer}."
        return cls(**{f.name: views.get(prefix + f.name) for f in fields(cls)})

    def transposed(self) -> "LayerParams":
        """The same weights as (R, in, out) views, as forward's products take them; biases as they are."""
        return LayerParams(**{f.name: _t(getattr(self, f.name)) if f.name.endswith(("_w", "_h", "_y")) else getattr(self, f.name) for f in fields(self)})


def _t(weight: Tensor | None) -> Tensor | None:
    return None if weight is None else weight.mT


@dataclass
class Saved:
    """What one layer's forward keeps for its backward: (R, batch, ·) activations, None where the layout lacks the part."""

    xs: Tensor  # [x, s]                                       (R, B, 2n)
    a: Tensor | None  # input gate [σ(A·c), σ(B·c)], 1 where off (R, B, 2n)
    c: Tensor  # [x_in, s_in]                                  (R, B, 2n)
    s: Tensor  # previous state                                (R, B, n)
    h0: Tensor  # candidate tanh(H·c)                          (R, B, n)
    g: Tensor | None  # state gate, 1 where off               (R, B, n)
    h1: Tensor  # after the state gate                         (R, B, n)
    f: Tensor | None  # forget gate, 1 where off              (R, B, n)
    u: Tensor  # output input [h, s_in, x], 0 where off        (R, B, dim u)
    o: Tensor  # O·u                                           (R, B, n)
    q: Tensor | None  # output gate σ(t), t = P·[o, u] or o where off (R, B, n)


@dataclass(frozen=True)
class Mask:
    """One switch of the superset path per replicate: `on` is 1.0 where the design has the part, `off` is 1 − on."""

    on: Tensor
    off: Tensor

    @classmethod
    def of(cls, on: Tensor) -> "Mask":
        return cls(on, 1 - on)


@dataclass(frozen=True)
class Switches:
    """Per-replicate switch masks of the superset path: gates (R, 1, 1), the parts of u (R, 1, dim u)."""

    input_gate: Mask
    state_gate: Mask
    forget_gate: Mask
    output_gate: Mask
    u: Mask  # which columns of u = [h, s_in, x] a design has

    @classmethod
    def of(cls, designs: Sequence[Design], device: torch.device, dtype: torch.dtype) -> "Switches":
        def on(switch: str) -> Tensor:
            return torch.tensor([float(getattr(d, switch)) for d in designs], device=device, dtype=dtype).view(-1, 1, 1)

        layout = superset_layout(designs[0])
        u = torch.cat([on(U_PARTS[part]).expand(-1, 1, cols) for part, cols in _u_parts(layout)], 2)
        gates = (on(s) for s in ("use_input_gate", "use_state_gate", "use_forget_gate", "use_output_gate"))
        return cls(*map(Mask.of, gates), Mask.of(u))


def _gate(gate: Tensor, mask: Mask | None) -> Tensor:
    """A gate where the design has it, exactly 1 where not: off + gate·on."""
    return gate if mask is None else torch.addcmul(mask.off, gate, mask.on)


def _masked(grad: Tensor, mask: Mask | None) -> Tensor:
    """A gradient that a part the design lacks stops: grad·on (in place)."""
    return grad if mask is None else grad.mul_(mask.on)


class Cell:
    """One layer of the cell (docs/study.md §1, d == n) on (R, batch, features) tensors.

    `layout` says which maps exist; `on` (superset path only) says which of
    them each replicate uses. Every row and column slice comes from the
    layout's offset table (`Param.rows`, `Param.cols`), so forward and
    backward cut the same blocks.
    """

    def __init__(self, layout: Design, params: list[Param], w: LayerParams, dw: LayerParams, on: Switches | None) -> None:
        self.D, self.n, self.w, self.dw, self.on = layout, layout.state_size, w, dw, on
        table = {q.name.rsplit(".", 1)[-1]: q for q in params}
        c_w, u_w, in_w = table["c_w"], table["u_w"], table.get("in_w")
        self.H, self.G, self.F = (c_w.rows(m) if m in c_w.maps else None for m in "HGF")  # rows of z = c_w·c
        self.O, self.P = (u_w.rows(m) if m in u_w.maps else None for m in "OP")  # rows of yz = u_w·u
        self.c_x, self.c_s = c_w.cols("x"), c_w.cols("s")  # columns of c = [x_in, s_in]
        if in_w is not None:  # columns of xs = [x, s], and of a = [a_x, a_s]: the rows of A and B
            self.xs_x, self.xs_s, self.A, self.B = in_w.cols("x"), in_w.cols("s"), in_w.rows("A"), in_w.rows("B")
        self.u_cols = {name: u_w.cols(name) for name, _ in u_w.parts}  # columns of u = [h, s_in, x]
        # Views made once (every update is in place, so they stay valid): a small cell's step is a few
        # microseconds a kernel, and making a view costs about as much.
        self.w_t = w.transposed()
        self.c_w_x, self.c_w_s = w.c_w[..., self.c_x], w.c_w[..., self.c_s]  # (R, k·n, n) column blocks
        self.in_w_x = w.in_w[..., self.xs_x] if in_w is not None else None  # (R, 2n, n)
        self.u_w_of = {name: w.u_w[..., cols] for name, cols in self.u_cols.items()}  # (R, rows, n) each
        self.u_on = {name: on.u.on[..., cols] for name, cols in self.u_cols.items()} if on else {}  # (R, 1, n)
        # dL/du parts that reach a parameter: h always, x as dL/dx, s_in only through the input gate.
        self.du_parts = [name for name in self.u_cols if name != "s" or layout.use_input_gate]

    def forward(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Saved]:
        """(y, next state h, what backward needs) from x, s: (R, B, n)."""
        D, w_t, on = self.D, self.w_t, self.on
        xs = c = torch.cat((x, s), 2)  # (R, B, 2n)
        a = None
        if D.use_input_gate:
            a = torch.baddbmm(w_t.in_b, xs, w_t.in_w).sigmoid_()  # (R,B,2n)@(R,2n,2n) → [σ(A·c), σ(B·c)]
            a = _gate(a, on and on.input_gate)
            c = xs * a  # [x_in, s_in]
        z = torch.baddbmm(w_t.c_b, c, w_t.c_w)  # (R,B,2n)@(R,2n,k·n) → [H·c, G_c·c, F_c·c]
        h0 = torch.tanh(z[..., self.H])
        h1, g, f = h0, None, None
        if D.use_state_gate:
            g = torch.baddbmm(z[..., self.G], h0, w_t.g_h).sigmoid_()  # (R,B,n)@(R,n,n)
            g = _gate(g, on and on.state_gate)
            h1 = torch.lerp(s, h0, g)  # g·h0 + (1 − g)·s; exactly h0 where g is 1
        h = h1
        if D.use_forget_gate:
            f = torch.baddbmm(z[..., self.F], h1, w_t.f_h).sigmoid_()  # (R,B,n)@(R,n,n)
            f = _gate(f, on and on.forget_gate)
            h = f * h1
        parts = {"h": h, "s": c[..., self.c_s], "x": x}
        u = torch.cat([parts[name] for name in self.u_cols], 2) if len(self.u_cols) > 1 else parts[next(iter(self.u_cols))]
        if on is not None:
            u = u * on.u.on  # a part a design lacks is 0
        yz = torch.baddbmm(w_t.u_b, u, w_t.u_w)  # (R,B,dim u)@(R,dim u,n or 2n) → [O·u, P_u·u]
        o, q = yz[..., self.O], None
        if D.use_output_gate:
            t = torch.baddbmm(yz[..., self.P], o, w_t.p_y)  # (R,B,n)@(R,n,n) → P·[o, u]
            if on is not None:
                t = torch.lerp(o, t, on.output_gate.on)  # exactly o where the gate is off: σ(o)·o is swish
            q = t.sigmoid_()
            y = o * q
        else:
            y = F.silu(o)
        return y, h, Saved(xs, a, c, s, h0, g, h1, f, u, o, q)

    def backward(self, sv: Saved, dy: Tensor) -> Tensor | None:
        """Write this layer's parameter gradients; return dL/dx, or None where y does not depend on x."""
        D, w, dw, on = self.D, self.w, self.dw, self.on
        if D.use_output_gate:
            dt = _sigmoid_backward(dy * sv.o, sv.q)  # (R, B, n)
            dt_p = dt if on is None else dt * on.output_gate.on  # the share that went through P
            torch.bmm(dt_p.mT, sv.o, out=dw.p_y)  # (R,n,B)@(R,B,n)
            do = torch.bmm(dt_p, w.p_y).addcmul_(dy, sv.q)  # (R,B,n)@(R,n,n)
            if on is not None:
                do.addcmul_(dt, on.output_gate.off)  # where off, t was o itself
            dyz = torch.cat((do, dt_p), 2)  # (R, B, 2n): rows O, then P, as plan() stacks them
        else:
            dyz = _silu_backward(dy, sv.o)
        torch.sum(dyz, 1, keepdim=True, out=dw.u_b)
        torch.bmm(dyz.mT, sv.u, out=dw.u_w)  # (R,rows,B)@(R,B,dim u)
        du = {name: self._du(dyz, name) for name in self.du_parts}
        ds_in, dx_in = du.get("s"), None
        if "h" in du:
            dx_in, ds_c = self._backward_gates(du["h"], sv)
            if ds_c is not None:
                ds_in = ds_c if ds_in is None else ds_in.add_(ds_c)
        if D.use_input_gate:
            dx_in = self._backward_input_gate(dx_in, ds_in, sv)
        dx = du.get("x")
        if dx is None or dx_in is None:
            return dx_in if dx is None else dx
        return dx.add_(dx_in)

    def _du(self, dyz: Tensor, name: str) -> Tensor:
        """dL/d(part `name` of u): (R,B,rows)@(R,rows,n); 0 for a replicate whose design lacks that part."""
        du = torch.bmm(dyz, self.u_w_of[name])
        return du if self.on is None else du.mul_(self.u_on[name])

    def _backward_gates(self, dh: Tensor, sv: Saved) -> tuple[Tensor, Tensor | None]:
        """Through the forget gate, state gate and candidate: (dL/dx_in, dL/ds_in or None if unused)."""
        D, w, dw, on = self.D, self.w, self.dw, self.on
        dz = dh.new_empty(*dh.shape[:2], w.c_w.shape[1])  # (R, B, k·n): [dH, dG_c, dF_c], rows as in forward
        if D.use_forget_gate:
            df = _masked(dh * sv.h1, on and on.forget_gate)
            df = _sigmoid_backward_into(df, sv.f, dz[..., self.F])
            torch.bmm(df.mT, sv.h1, out=dw.f_h)  # (R,n,B)@(R,B,n)
            dh = torch.bmm(df, w.f_h).addcmul_(dh, sv.f)  # (R,B,n)@(R,n,n)
        if D.use_state_gate:
            dg = _masked(dh * (sv.h0 - sv.s), on and on.state_gate)
            dg = _sigmoid_backward_into(dg, sv.g, dz[..., self.G])
            torch.bmm(dg.mT, sv.h0, out=dw.g_h)  # (R,n,B)@(R,B,n)
            dh = torch.bmm(dg, w.g_h).addcmul_(dh, sv.g)  # (R,B,n)@(R,n,n)
        _tanh_backward_into(dh, sv.h0, dz[..., self.H])
        torch.sum(dz, 1, keepdim=True, out=dw.c_b)
        torch.bmm(dz.mT, sv.c, out=dw.c_w)  # (R,k·n,B)@(R,B,2n)
        ds_in = torch.bmm(dz, self.c_w_s) if D.use_input_gate else None  # (R,B,k·n)@(R,k·n,n)
        return torch.bmm(dz, self.c_w_x), ds_in  # (R,B,k·n)@(R,k·n,n)

    def _backward_input_gate(self, dx_in: Tensor | None, ds_in: Tensor | None, sv: Saved) -> Tensor:
        """x_in = a_x⊙x, s_in = a_s⊙s with [a_x, a_s] = σ([A; B]·[x, s]): gradients of A and B; return dL/dx."""
        dw, on = self.dw, self.on
        some = dx_in if dx_in is not None else ds_in
        da = some.new_zeros(*some.shape[:2], 2 * self.n)  # (R, B, 2n): [dA, dB], rows as in forward
        for d_in, inp, gate in ((dx_in, self.xs_x, self.A), (ds_in, self.xs_s, self.B)):
            if d_in is not None:
                d_gate = _masked(d_in * sv.xs[..., inp], on and on.input_gate)
                _sigmoid_backward_into(d_gate, sv.a[..., gate], da[..., gate])
        torch.sum(da, 1, keepdim=True, out=dw.in_b)
        torch.bmm(da.mT, sv.xs, out=dw.in_w)  # (R,2n,B)@(R,B,2n)
        dx = torch.bmm(da, self.in_w_x)  # (R,B,2n)@(R,2n,n)
        return dx if dx_in is None else dx.addcmul_(dx_in, sv.a[..., self.A])


# --------------------------------------------------------------------------- the model


class ByteModel:
    """Embedding → stacked cells → `vocab` logits (256: bytes), one position per call, for R replicates.

    `designs` gives each replicate's design (one Design: the same for all) and
    `seeds` each replicate's initialisation seed. On the design path every
    replicate must have the same design; with `superset=True` any designs of
    one shape. States are lists (one per layer) of (R, batch, n) tensors;
    bytes and targets are (R, batch). Replicate state dicts (`replicate`,
    `load_replicate`) are always in the replicate's own design's layout, so a
    run's weights and checkpoints do not depend on the path or the group.

    `weights` (one state dict per replicate, in its design's layout) start the
    replicates from trained weights instead of their seeds' initial ones.

    `compute_dtype` (default: `dtype`) is the precision of the step's arithmetic.
    With bfloat16 the parameters stay float32 (the optimiser's master copy):
    each step casts them to a bfloat16 working copy in one pass, runs forward
    and backward in bfloat16 with the softmax and loss in float32, and casts
    the gradients back — what autocast does, in two casts per step.
    """

    def __init__(
        self,
        designs: Design | Sequence[Design],
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        compute_dtype: torch.dtype | None = None,
        superset: bool = False,
        vocab: int = VOCAB,
        weights: Sequence[dict[str, Tensor]] | None = None,
    ) -> None:
        self.designs = [designs] * len(seeds) if isinstance(designs, Design) else list(designs)
        if len(self.designs) != len(seeds):
            raise ValueError("one design per seed")
        shapes = {(d.n_layers, d.state_size) for d in self.designs}
        if superset and len(shapes) != 1:
            raise ValueError("the superset path needs designs of one shape (depth and width)")
        if not superset and len(set(self.designs)) != 1:
            raise ValueError("the design path needs one design for every replicate")
        self.replicates, self.vocab = len(seeds), vocab
        self.layout = superset_layout(self.designs[0]) if superset else self.designs[0]
        self.plan = plan(self.layout, vocab)
        self._placements = {d: _placement(d, self.layout, torch.device(device), vocab) for d in set(self.designs)}
        self.theta = torch.zeros(self.replicates * sum(p.numel for p in self.plan), device=device, dtype=dtype)
        self.grad = torch.zeros_like(self.theta)
        for r, (design, seed) in enumerate(zip(self.designs, seeds)):
            self.load_replicate(r, initial_weights(design, seed, vocab) if weights is None else weights[r])
        mixed = compute_dtype not in (None, dtype)
        self._work = torch.empty_like(self.theta, dtype=compute_dtype) if mixed else self.theta
        self._work_grad = torch.zeros_like(self._work) if mixed else self.grad
        self.params, self.grads = self.views(self._work), self.views(self._work_grad)
        switches = Switches.of(self.designs, self.theta.device, self.compute_dtype) if superset else None
        self.cells = [
            Cell(self.layout, [q for q in self.plan if q.name.startswith(f"cells.{i}.")], LayerParams.of(self.params, i),
                 LayerParams.of(self.grads, i), switches)
            for i in range(self.layout.n_layers)
        ]
        self._head_w_t = self.params["head_w"].mT  # (R, n, V), made once like the cells' views
        # Row offsets that make replicate r's symbol b pick row r·V + b of the stacked lookup tables.
        self._row0 = torch.arange(self.replicates, device=device).unsqueeze(1) * vocab
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
        """Replicate r's part of a buffer laid out like `theta`, in its design's layout, as a state dict of copies."""
        views = self.views(flat)
        return {name: views[name][r][index] for name, index in self._placements[self.designs[r]].items()}

    def load_replicate(self, r: int, weights: dict[str, Tensor], flat: Tensor | None = None) -> None:
        """Copy a state dict (in replicate r's design's layout) into replicate r of `flat` (default: the parameters)."""
        views = self.views(self.theta if flat is None else flat)
        placement = self._placements[self.designs[r]]
        if weights.keys() != placement.keys():
            raise ValueError(f"parameter names differ: {sorted(set(weights) ^ set(placement))}")
        for name, index in placement.items():
            part = views[name][r].zero_()  # what the design lacks stays 0
            part[index] = weights[name].to(part.device, part.dtype).reshape(part[index].shape)

    def initial_state(self, batch_size: int) -> list[Tensor]:
        shape = (self.replicates, batch_size, self.layout.state_size)
        return [torch.zeros(shape, device=self.device, dtype=self.compute_dtype) for _ in self.cells]

    def _rows(self, byte: Tensor) -> Tensor:
        """Rows of the stacked (R·V, n) lookup table: replicate r's symbol b is row r·V + b."""
        return byte if self.replicates == 1 else byte + self._row0

    def embed(self, byte: Tensor) -> Tensor:
        """The embedded input (R, B, n) of bytes (R, B): what the first layer reads."""
        return self._embed(self._rows(byte))

    def _embed(self, rows: Tensor) -> Tensor:
        table = self.params["embed_w"].view(-1, self.layout.state_size)  # (R·V, n)
        return table.index_select(0, rows.view(-1)).view(*rows.shape, -1).add_(self.params["embed_b"])  # (R, B, n)

    def forward(self, rows: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor], list[Saved], Tensor]:
        """(logits, next states, per-layer saved tensors, last layer output) from lookup-table rows."""
        if self._work is not self.theta:
            self._work.copy_(self.theta)
        return self.from_embedded(self._embed(rows), states)

    def from_embedded(self, x: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor], list[Saved], Tensor]:
        """`forward` from the embedded input x (R, B, n): plain tensor operations, so autograd can follow them
        through time (rnnsweep.dynamics), though training differentiates by hand."""
        saved, next_states = [], []
        for cell, s in zip(self.cells, states):
            x, h, sv = cell.forward(x, s)
            saved.append(sv)
            next_states.append(h)
        return torch.baddbmm(self.params["head_b"], x, self._head_w_t), next_states, saved, x  # (R,B,n)@(R,n,V)

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
        dlogits = probs.scatter_add_(2, picked, self._minus_one(picked)).div_(batch).to(y.dtype)  # (R, B, V)
        grads = self.grads
        torch.bmm(dlogits.mT, y, out=grads["head_w"])  # (R,V,B)@(R,B,n)
        torch.sum(dlogits, 1, keepdim=True, out=grads["head_b"])
        dy = torch.bmm(dlogits, self.params["head_w"])  # (R,B,V)@(R,V,n)
        for cell, sv in zip(reversed(self.cells), reversed(saved)):
            dy = cell.backward(sv, dy)
            if dy is None:
                break  # nothing below this layer reaches the loss
        if dy is not None:
            torch.sum(dy, 1, keepdim=True, out=grads["embed_b"])
            table = grads["embed_w"].view(-1, self.layout.state_size).zero_()
            table.index_put_((rows.view(-1),), dy.reshape(-1, dy.shape[2]), accumulate=True)
        if self._work_grad is not self.grad:
            self.grad.copy_(self._work_grad)
        return loss, next_states

    def _minus_one(self, like: Tensor) -> Tensor:
        if self._ones is None or self._ones.shape != like.shape:
            self._ones = torch.full(like.shape, -1.0, device=self.device, dtype=self.theta.dtype)
        return self._ones
