"""A plain, unfused implementation of docs/study.md §1–2, written line by line from its definitions.

It exists to check the fused engine in `rnnsweep.model` (the tests copy the
same weights into both and compare values and gradients), as the baseline
of the speed benchmark, and to check the gradients through time that
`rnnsweep.dynamics` takes from the engine: with `detach=False` the state
carries its graph from step to step (for analysis only; training detaches,
as the study defines). It favours
resemblance to the definitions over speed: one nn.Linear per map and a one-hot
input through an affine map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnsweep.design import Design
from rnnsweep.plan import VOCAB


class ReferenceCell(nn.Module):
    def __init__(self, design: Design) -> None:
        super().__init__()
        self.design = design
        d = n = design.state_size
        if design.use_input_gate:
            self.A = nn.Linear(d + n, d)
            self.B = nn.Linear(d + n, n)
        self.H = nn.Linear(d + n, n)
        if design.use_state_gate:
            self.G = nn.Linear(d + 2 * n, n)
        if design.use_forget_gate:
            self.F = nn.Linear(d + 2 * n, n)
        u = n * design.use_new_state + n * design.use_old_state + d * design.use_residual
        self.O = nn.Linear(u, d)
        if design.use_output_gate:
            self.P = nn.Linear(d + u, d)

    def forward(self, x: Tensor, s: Tensor, detach: bool = True) -> tuple[Tensor, Tensor]:
        design = self.design
        # 1. concatenate
        c = torch.cat([x, s], dim=1)
        x_in, s_in = x, s
        # 2. input gate
        if design.use_input_gate:
            x_in = torch.sigmoid(self.A(c)) * x
            s_in = torch.sigmoid(self.B(c)) * s
            c = torch.cat([x_in, s_in], dim=1)
        # 3. candidate
        h = torch.tanh(self.H(c))
        # 4. state gate: interpolate with the raw previous state
        if design.use_state_gate:
            g = torch.sigmoid(self.G(torch.cat([c, h], dim=1)))
            h = g * h + (1 - g) * s
        # 5. forget gate, from the h of step 4
        if design.use_forget_gate:
            f = torch.sigmoid(self.F(torch.cat([c, h], dim=1)))
            h = f * h
        # 6. output input
        parts = []
        if design.use_new_state:
            parts.append(h)
        if design.use_old_state:
            parts.append(s_in)
        if design.use_residual:
            parts.append(x)
        u = torch.cat(parts, dim=1)
        # 7. output map
        y = self.O(u)
        # 8. output gate, or swish
        if design.use_output_gate:
            y = y * torch.sigmoid(self.P(torch.cat([y, u], dim=1)))
        else:
            y = y * torch.sigmoid(y)
        # 9. the next state carries no graph (in training)
        return y, h.detach() if detach else h


class ReferenceModel(nn.Module):
    def __init__(self, design: Design, vocab: int = VOCAB) -> None:
        super().__init__()
        self.design, self.vocab = design, vocab
        n = design.state_size
        self.embed = nn.Linear(vocab, n)
        self.cells = nn.ModuleList(ReferenceCell(design) for _ in range(design.n_layers))
        self.head = nn.Linear(n, vocab)

    def initial_state(self, batch_size: int, device: torch.device) -> list[Tensor]:
        return [torch.zeros(batch_size, self.design.state_size, device=device) for _ in self.cells]

    def embedded(self, byte: Tensor) -> Tensor:
        """The input embedding of each symbol: (batch,) -> (batch, n)."""
        return self.embed(F.one_hot(byte, self.vocab).to(self.embed.weight.dtype))

    def step(self, y: Tensor, states: list[Tensor], detach: bool = True) -> tuple[Tensor, list[Tensor]]:
        """(logits, next states) from embedded inputs (batch, n) and one state (batch, n) per layer."""
        next_states = []
        for cell, s in zip(self.cells, states):
            y, h = cell(y, s, detach)
            next_states.append(h)
        return self.head(y), next_states

    def forward(self, byte: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        return self.step(self.embedded(byte), states)


@torch.no_grad()
def engine_state(ref: ReferenceModel, grads: bool = False) -> dict[str, Tensor]:
    """The reference's weights (or gradients) as one engine replicate's state dict, block by block."""

    def get(m: nn.Linear, attr: str) -> Tensor:
        t = getattr(m, attr)
        return (t.grad if t.grad is not None else torch.zeros_like(t)) if grads else t.detach()

    d, n = ref.design, ref.design.state_size
    out = {"embed_w": get(ref.embed, "weight").T, "embed_b": get(ref.embed, "bias")}
    for i, rc in enumerate(ref.cells):
        p = f"cells.{i}."
        if d.use_input_gate:  # A and B read c = [x, s]
            out[p + "in_w"] = torch.cat([get(rc.A, "weight"), get(rc.B, "weight")])
            out[p + "in_b"] = torch.cat([get(rc.A, "bias"), get(rc.B, "bias")])
        gates = [rc.H] + ([rc.G] if d.use_state_gate else []) + ([rc.F] if d.use_forget_gate else [])
        out[p + "c_w"] = torch.cat([get(m, "weight")[:, : 2 * n] for m in gates])
        out[p + "c_b"] = torch.cat([get(m, "bias") for m in gates])
        if d.use_state_gate:
            out[p + "g_h"] = get(rc.G, "weight")[:, 2 * n :]
        if d.use_forget_gate:
            out[p + "f_h"] = get(rc.F, "weight")[:, 2 * n :]
        # O reads u; P reads [y, u]: stack O with P's u-columns.
        o = get(rc.O, "weight")
        u_b = get(rc.O, "bias")
        if d.use_output_gate:
            o = torch.cat([o, get(rc.P, "weight")[:, n:]])
            u_b = torch.cat([u_b, get(rc.P, "bias")])
            out[p + "p_y"] = get(rc.P, "weight")[:, :n]
        out[p + "u_w"], out[p + "u_b"] = o, u_b
    out["head_w"], out["head_b"] = get(ref.head, "weight"), get(ref.head, "bias")
    return out


@torch.no_grad()
def load_engine_state(ref: ReferenceModel, state: dict[str, Tensor]) -> ReferenceModel:
    """Copy one engine replicate's state dict (a run's weights.pt) into the reference: `engine_state`'s inverse."""
    d, n = ref.design, ref.design.state_size

    def put(m: nn.Linear, weight: Tensor, bias: Tensor) -> None:
        m.weight.copy_(weight)
        m.bias.copy_(bias)

    put(ref.embed, state["embed_w"].T, state["embed_b"])
    for i, rc in enumerate(ref.cells):
        p = f"cells.{i}."
        if d.use_input_gate:  # rows: A's d, then B's n
            put(rc.A, state[p + "in_w"][:n], state[p + "in_b"][:n])
            put(rc.B, state[p + "in_w"][n:], state[p + "in_b"][n:])
        own_h = {"G": "g_h", "F": "f_h"}  # the gates that also read h keep those columns apart
        gates = [("H", rc.H)] + [(k, getattr(rc, k)) for k, on in (("G", d.use_state_gate), ("F", d.use_forget_gate)) if on]
        for k, (name, m) in enumerate(gates):
            rows = slice(k * n, (k + 1) * n)
            weight = state[p + "c_w"][rows]
            if name in own_h:
                weight = torch.cat([weight, state[p + own_h[name]]], dim=1)
            put(m, weight, state[p + "c_b"][rows])
        if d.use_output_gate:  # rows: O's d, then P's u-columns; P's y-columns apart
            put(rc.O, state[p + "u_w"][:n], state[p + "u_b"][:n])
            put(rc.P, torch.cat([state[p + "p_y"], state[p + "u_w"][n:]], dim=1), state[p + "u_b"][n:])
        else:
            put(rc.O, state[p + "u_w"], state[p + "u_b"])
    put(ref.head, state["head_w"], state["head_b"])
    return ref
