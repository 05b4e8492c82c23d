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
  writes into (each layer's slices, cut once: `LayerSlices`), and what
  initialisation and the superset layout read.
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
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnsweep.design import Design
from rnnsweep.plan import U_PARTS, VOCAB, Param, plan, superset_layout, u_parts

_sigmoid_backward = torch.ops.aten.sigmoid_backward  # (grad, σ(z)) → grad·σ(z)·(1−σ(z))
_silu_backward = torch.ops.aten.silu_backward  # (grad, z) → grad·d silu(z)/dz


def _sigmoid_backward_into(grad: Tensor, out: Tensor, into: Tensor) -> Tensor:
    return torch.ops.aten.sigmoid_backward.grad_input(grad, out, grad_input=into)


def _tanh_backward_into(grad: Tensor, out: Tensor, into: Tensor) -> Tensor:
    return torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=into)


# --------------------------------------------------------------------------- initial weights


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

    #: The fields that are weights, (R, out, in); the rest are biases. Forward's products take the weights transposed.
    WEIGHTS: ClassVar[tuple[str, ...]] = ("in_w", "c_w", "g_h", "f_h", "u_w", "p_y")

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
        """The same parameters with every weight (`WEIGHTS`) as an (R, in, out) view, as forward's products take it."""
        return replace(self, **{name: _t(getattr(self, name)) for name in self.WEIGHTS})


def _t(weight: Tensor | None) -> Tensor | None:
    return None if weight is None else weight.mT


@dataclass(frozen=True)
class LayerSlices:
    """Where each map's rows and each input's columns sit in one layer's stacked tensors.

    Cut once from the plan's offset table (`Param.rows`, `Param.cols`), so
    forward reads and backward writes the same blocks. A row slice is named
    after its map in lower case (docs/study.md §1) and is a block of the last
    axis of that map's stacked product (and of its gradient); a column slice
    is a block of the last axis of a stacked input. A map or input that the
    layout lacks is None.
    """

    a: slice | None  # rows of a = σ([A; B]·xs), the input gate: A's, which gate x
    b: slice | None  # rows of a: B's, which gate s
    h: slice  # rows of z = [H; G_c; F_c]·c: the candidate's
    g: slice | None  # rows of z: the state gate's c-part
    f: slice | None  # rows of z: the forget gate's c-part
    o: slice  # rows of yz = [O; P_u]·u: the output map's
    p: slice | None  # rows of yz: the output gate's u-part
    xs_x: slice | None  # columns of xs = [x, s] (what the input gate reads) that hold x
    xs_s: slice | None  # columns of xs that hold s
    c_x: slice  # columns of c = [x_in, s_in] that hold x_in
    c_s: slice  # columns of c that hold s_in
    u: dict[str, slice]  # columns of u = [h, s_in, x] by part ("h", "s", "x"), the parts the layout has
    du: tuple[str, ...]  # the parts of u whose gradient reaches a parameter: h, x (as dL/dx), s_in only through the input gate

    @classmethod
    def of(cls, params: Sequence[Param]) -> "LayerSlices":
        """The slices of one layer's parameters in the plan (those named `cells.<i>.*`)."""
        table = {q.name.rsplit(".", 1)[-1]: q for q in params}
        in_w, c_w, u_w = table.get("in_w"), table["c_w"], table["u_w"]

        def rows(param: Param | None, map_name: str) -> slice | None:
            return param.rows(map_name) if param is not None and map_name in param.maps else None

        def cols(param: Param | None, input_name: str) -> slice | None:
            return None if param is None else param.cols(input_name)

        u = {part: u_w.cols(part) for part, _ in u_w.parts}
        return cls(
            a=rows(in_w, "A"), b=rows(in_w, "B"),
            h=c_w.rows("H"), g=rows(c_w, "G"), f=rows(c_w, "F"),
            o=u_w.rows("O"), p=rows(u_w, "P"),
            xs_x=cols(in_w, "x"), xs_s=cols(in_w, "s"),
            c_x=c_w.cols("x"), c_s=c_w.cols("s"),
            u=u, du=tuple(part for part in u if part != "s" or in_w is not None),
        )


@dataclass(frozen=True)
class LayerViews:
    """What backward's input gradients multiply by: weight column blocks (and, superset path, masks of u).

    Made once (every update is in place, so they stay valid): a small cell's
    step is a few microseconds a kernel, and making a view costs about as much.
    """

    c_x: Tensor  # (R, k·n, n)  c_w's columns that read x_in
    c_s: Tensor  # (R, k·n, n)  c_w's columns that read s_in
    in_x: Tensor | None  # (R, 2n, n)  in_w's columns that read x
    u: dict[str, Tensor]  # (R, rows, n) by part of u: u_w's columns that read it
    u_on: dict[str, Tensor]  # (R, 1, n) by part of u: 1.0 where the replicate's design has it; empty on the design path

    @classmethod
    def of(cls, w: LayerParams, at: LayerSlices, on: Switches | None) -> "LayerViews":
        return cls(
            c_x=w.c_w[..., at.c_x],
            c_s=w.c_w[..., at.c_s],
            in_x=None if w.in_w is None else w.in_w[..., at.xs_x],
            u={part: w.u_w[..., cols] for part, cols in at.u.items()},
            u_on={part: on.u.on[..., cols] for part, cols in at.u.items()} if on else {},
        )


@dataclass
class Saved:
    """What one layer's forward keeps for its backward: (R, batch, ·) activations, None where the layout lacks the part."""

    xs: Tensor  # [x, s]                                       (R, B, 2n)
    a: Tensor | None  # input gate [σ(A·xs), σ(B·xs)], 1 where off (R, B, 2n)
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
        u = torch.cat([on(U_PARTS[part]).expand(-1, 1, cols) for part, cols in u_parts(layout)], 2)
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
    them each replicate uses. On the design path `on` is None and every mask
    is skipped, so both paths run this one body. `forward` and `backward` run
    the study's steps; below them each step's forward sits beside its
    backward, in the study's order. Each backward writes its maps' gradients
    into `dw` and returns the gradient of its input.
    """

    def __init__(self, layout: Design, params: list[Param], w: LayerParams, dw: LayerParams, on: Switches | None) -> None:
        self.layout, self.w, self.dw, self.on = layout, w, dw, on
        self.w_t = w.transposed()  # made once, like the views below
        self.at = LayerSlices.of(params)
        self.views = LayerViews.of(w, self.at, on)

    def forward(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Saved]:
        """(y, next state h, what backward needs) from x, s: (R, B, n)."""
        xs = torch.cat((x, s), 2)  # (R, B, 2n)
        a, c = self._input_gate(xs)
        z, h0 = self._candidate(c)
        g, h1 = self._state_gate(z, h0, s)
        f, h = self._forget_gate(z, h1)
        u = self._output_input(h, c, x)
        y, o, q = self._output_gate(self._output_map(u))
        return y, h, Saved(xs, a, c, s, h0, g, h1, f, u, o, q)

    def backward(self, sv: Saved, dy: Tensor) -> Tensor | None:
        """Write this layer's parameter gradients; return dL/dx, or None where y does not depend on x."""
        du = self._output_map_backward(self._output_gate_backward(dy, sv), sv)
        ds_in, dx_in = du.get("s"), None
        if "h" in du:
            dh = du["h"]
            dz = dh.new_empty(*dh.shape[:2], self.w.c_w.shape[1])  # (R, B, k·n): [dH, dG_c, dF_c], rows as in z
            # Back through steps 5, 4, 3: each gate writes its block of dz, the candidate its own and then z's map.
            dh1 = self._forget_gate_backward(dh, dz, sv)
            dh0 = self._state_gate_backward(dh1, dz, sv)
            dx_in, ds_c = self._candidate_backward(dh0, dz, sv)
            if ds_c is not None:
                ds_in = ds_c if ds_in is None else ds_in.add_(ds_c)
        if self.layout.use_input_gate:
            dx_in = self._input_gate_backward(dx_in, ds_in, sv)
        dx = du.get("x")
        if dx is None or dx_in is None:
            return dx_in if dx is None else dx
        return dx.add_(dx_in)

    # Step 2: the input gate. xs = [x, s] is the study's c of step 1.

    def _input_gate(self, xs: Tensor) -> tuple[Tensor | None, Tensor]:
        """(a, c): a = [σ(A·xs), σ(B·xs)] and c = a⊙xs = [x_in, s_in]; (None, xs) without the gate."""
        if not self.layout.use_input_gate:
            return None, xs
        a = torch.baddbmm(self.w_t.in_b, xs, self.w_t.in_w).sigmoid_()  # (R,B,2n)@(R,2n,2n) → [A·xs, B·xs]
        a = _gate(a, self.on and self.on.input_gate)
        return a, xs * a

    def _input_gate_backward(self, dx_in: Tensor | None, ds_in: Tensor | None, sv: Saved) -> Tensor:
        """Gradients of [A; B] from dL/dx_in and dL/ds_in (None where unused); return dL/dx."""
        at, mask = self.at, self.on and self.on.input_gate
        some = dx_in if dx_in is not None else ds_in
        da = some.new_zeros(*some.shape[:2], self.w.in_w.shape[1])  # (R, B, 2n): [dA, dB], rows as in a
        for d_in, cols, rows in ((dx_in, at.xs_x, at.a), (ds_in, at.xs_s, at.b)):
            if d_in is not None:
                d_gate = _masked(d_in * sv.xs[..., cols], mask)
                _sigmoid_backward_into(d_gate, sv.a[..., rows], da[..., rows])
        torch.sum(da, 1, keepdim=True, out=self.dw.in_b)
        torch.bmm(da.mT, sv.xs, out=self.dw.in_w)  # (R,2n,B)@(R,B,2n)
        dx = torch.bmm(da, self.views.in_x)  # (R,B,2n)@(R,2n,n)
        return dx if dx_in is None else dx.addcmul_(dx_in, sv.a[..., at.a])

    # Step 3: the candidate, in one product with the c-parts of the state and forget gates.

    def _candidate(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """(z, h0): z = [H·c, G_c·c, F_c·c] and the candidate h0 = tanh(H·c)."""
        z = torch.baddbmm(self.w_t.c_b, c, self.w_t.c_w)  # (R,B,2n)@(R,2n,k·n)
        return z, torch.tanh(z[..., self.at.h])

    def _candidate_backward(self, dh0: Tensor, dz: Tensor, sv: Saved) -> tuple[Tensor, Tensor | None]:
        """H's block of dz from dL/dh0, then [H; G_c; F_c]'s gradients (the gates have written their blocks of dz).

        Returns (dL/dx_in, dL/ds_in), the latter None where nothing reads it (no input gate).
        """
        _tanh_backward_into(dh0, sv.h0, dz[..., self.at.h])
        torch.sum(dz, 1, keepdim=True, out=self.dw.c_b)
        torch.bmm(dz.mT, sv.c, out=self.dw.c_w)  # (R,k·n,B)@(R,B,2n)
        ds_in = torch.bmm(dz, self.views.c_s) if self.layout.use_input_gate else None  # (R,B,k·n)@(R,k·n,n)
        return torch.bmm(dz, self.views.c_x), ds_in  # (R,B,k·n)@(R,k·n,n)

    # Step 4: the state gate.

    def _state_gate(self, z: Tensor, h0: Tensor, s: Tensor) -> tuple[Tensor | None, Tensor]:
        """(g, h1): g = σ(G·[c, h0]) and h1 = g⊙h0 + (1 − g)⊙s; (None, h0) without the gate."""
        if not self.layout.use_state_gate:
            return None, h0
        g = torch.baddbmm(z[..., self.at.g], h0, self.w_t.g_h).sigmoid_()  # G_c·c + (R,B,n)@(R,n,n)
        g = _gate(g, self.on and self.on.state_gate)
        return g, torch.lerp(s, h0, g)  # exactly h0 where g is 1

    def _state_gate_backward(self, dh1: Tensor, dz: Tensor, sv: Saved) -> Tensor:
        """G's gradients (its block of dz and its h-part) from dL/dh1; return dL/dh0."""
        if not self.layout.use_state_gate:
            return dh1
        dg = _masked(dh1 * (sv.h0 - sv.s), self.on and self.on.state_gate)
        dg = _sigmoid_backward_into(dg, sv.g, dz[..., self.at.g])
        torch.bmm(dg.mT, sv.h0, out=self.dw.g_h)  # (R,n,B)@(R,B,n)
        return torch.bmm(dg, self.w.g_h).addcmul_(dh1, sv.g)  # (R,B,n)@(R,n,n)

    # Step 5: the forget gate, from the h of step 4.

    def _forget_gate(self, z: Tensor, h1: Tensor) -> tuple[Tensor | None, Tensor]:
        """(f, h): f = σ(F·[c, h1]) and h = f⊙h1; (None, h1) without the gate."""
        if not self.layout.use_forget_gate:
            return None, h1
        f = torch.baddbmm(z[..., self.at.f], h1, self.w_t.f_h).sigmoid_()  # F_c·c + (R,B,n)@(R,n,n)
        f = _gate(f, self.on and self.on.forget_gate)
        return f, f * h1

    def _forget_gate_backward(self, dh: Tensor, dz: Tensor, sv: Saved) -> Tensor:
        """F's gradients (its block of dz and its h-part) from dL/dh; return dL/dh1."""
        if not self.layout.use_forget_gate:
            return dh
        df = _masked(dh * sv.h1, self.on and self.on.forget_gate)
        df = _sigmoid_backward_into(df, sv.f, dz[..., self.at.f])
        torch.bmm(df.mT, sv.h1, out=self.dw.f_h)  # (R,n,B)@(R,B,n)
        return torch.bmm(df, self.w.f_h).addcmul_(dh, sv.f)  # (R,B,n)@(R,n,n)

    # Steps 6 and 7: the output input u and the output map, in one product with the output gate's u-part.

    def _output_input(self, h: Tensor, c: Tensor, x: Tensor) -> Tensor:
        """u = [h, s_in, x], the parts the layout has; on the superset path a part a design lacks is 0."""
        parts, cols = {"h": h, "s": c[..., self.at.c_s], "x": x}, self.at.u
        u = torch.cat([parts[part] for part in cols], 2) if len(cols) > 1 else parts[next(iter(cols))]
        return u if self.on is None else u * self.on.u.on

    def _output_map(self, u: Tensor) -> Tensor:
        """yz = [O·u, P_u·u]."""
        return torch.baddbmm(self.w_t.u_b, u, self.w_t.u_w)  # (R,B,dim u)@(R,dim u,n or 2n)

    def _output_map_backward(self, dyz: Tensor, sv: Saved) -> dict[str, Tensor]:
        """[O; P_u]'s gradients from dL/dyz; return dL/du by part, for the parts in `LayerSlices.du`."""
        torch.sum(dyz, 1, keepdim=True, out=self.dw.u_b)
        torch.bmm(dyz.mT, sv.u, out=self.dw.u_w)  # (R,rows,B)@(R,B,dim u)
        return {part: self._du(dyz, part) for part in self.at.du}

    def _du(self, dyz: Tensor, part: str) -> Tensor:
        """dL/d(part of u): 0 for a replicate whose design lacks that part."""
        du = torch.bmm(dyz, self.views.u[part])  # (R,B,rows)@(R,rows,n)
        return du if self.on is None else du.mul_(self.views.u_on[part])

    # Step 8: the output gate, or swish.

    def _output_gate(self, yz: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(y, o, q): o = O·u, y = o⊙q with q = σ(t), t = P·[o, u]; without the gate y = o⊙σ(o) (swish) and q None."""
        o = yz[..., self.at.o]
        if not self.layout.use_output_gate:
            return F.silu(o), o, None
        t = torch.baddbmm(yz[..., self.at.p], o, self.w_t.p_y)  # P_u·u + (R,B,n)@(R,n,n)
        if self.on is not None:
            t = torch.lerp(o, t, self.on.output_gate.on)  # exactly o where the gate is off: σ(o)·o is swish
        q = t.sigmoid_()
        return o * q, o, q

    def _output_gate_backward(self, dy: Tensor, sv: Saved) -> Tensor:
        """P's y-part gradient from dL/dy; return dL/dyz (R, B, rows of yz): [dL/do, dL/dt]."""
        if not self.layout.use_output_gate:
            return _silu_backward(dy, sv.o)
        on = self.on
        dt = _sigmoid_backward(dy * sv.o, sv.q)  # (R, B, n)
        dt_p = dt if on is None else dt * on.output_gate.on  # the share that went through P
        torch.bmm(dt_p.mT, sv.o, out=self.dw.p_y)  # (R,n,B)@(R,B,n)
        do = torch.bmm(dt_p, self.w.p_y).addcmul_(dy, sv.q)  # (R,B,n)@(R,n,n)
        if on is not None:
            do.addcmul_(dt, on.output_gate.off)  # where off, t was o itself
        return torch.cat((do, dt_p), 2)  # (R, B, 2n): rows O, then P, as plan() stacks them


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
        self._grad_rows = [g.view(self.replicates, -1) for g in self.views(self.grad).values()]  # (R, numel) per parameter
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

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Scale each replicate's gradient down to a global L2 norm of at most `max_norm`; return the norms before (R,).

        What torch.nn.utils.clip_grad_norm_ does to one run's model, for each replicate by its own norm, so a
        run's steps do not depend on the runs beside it: the norm of the parameters' norms, each parameter's
        one row per replicate of its (R, numel) block of `grad`. Parts of the superset a design lacks hold 0
        and add nothing. One reduction and one scaling per parameter, none per replicate.
        """
        norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dim=1) for g in self._grad_rows], 1), dim=1)
        scale = (max_norm / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1)  # torch's coefficient and its clamp
        for rows in self._grad_rows:
            rows.mul_(scale)
        return norms

    def _minus_one(self, like: Tensor) -> Tensor:
        if self._ones is None or self._ones.shape != like.shape:
            self._ones = torch.full(like.shape, -1.0, device=self.device, dtype=self.theta.dtype)
        return self._ones
