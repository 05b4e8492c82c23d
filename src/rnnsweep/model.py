"""The gated recurrent cell of spec §1 and the byte model of spec §2, with fused maps.

Maps that read the same input are stacked into one matrix so each step costs
few, larger matrix products:

* A and B (input gate) both read c → one (d+n → d+n) map.
* H reads c; G and F read [c, h], which splits into a c-part and an h-part.
  The c-parts of H, G and F are stacked → one map; the h-parts stay separate
  because h changes between them (F sees the h that the state gate produced).
* O and P (output gate) both read u; P's y-part stays separate because y is O's output.

Every block is initialised uniform in ±1/sqrt(fan_in) of the map it belongs
to (fan_in of the *whole* map, e.g. d+2n for G), exactly like torch.nn.Linear
of that map, so the fused model has the same initial distribution as the
unfused one in `rnnsweep.reference`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnsweep.grid import Design

VOCAB = 256


def _uniform(rows: int, cols: int | None, fan_in: int, gen: torch.Generator) -> Tensor:
    """A weight (rows × cols) or bias (rows) tensor, uniform in ±1/sqrt(fan_in)."""
    shape = (rows,) if cols is None else (rows, cols)
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


def _stack(blocks: list[tuple[int, int]], cols: int | None, gen: torch.Generator) -> nn.Parameter:
    """Stack row blocks [(rows, fan_in), ...] into one parameter, each with its own bound."""
    return nn.Parameter(torch.cat([_uniform(rows, cols, fan_in, gen) for rows, fan_in in blocks]))


class Cell(nn.Module):
    """One layer of spec §1 with d == n; returns (y, next state detached)."""

    def __init__(self, design: Design, gen: torch.Generator) -> None:
        super().__init__()
        self.design = design
        n = d = design.state_size
        self.n = n
        if design.use_input_gate:  # [A; B]
            blocks = [(d, d + n), (n, d + n)]
            self.in_w, self.in_b = _stack(blocks, d + n, gen), _stack(blocks, None, gen)
        blocks = [(n, d + n)]  # H, then the c-parts of G and F
        blocks += [(n, d + 2 * n)] * (design.use_state_gate + design.use_forget_gate)
        self.c_w, self.c_b = _stack(blocks, d + n, gen), _stack(blocks, None, gen)
        if design.use_state_gate:  # h-part of G
            self.g_h = nn.Parameter(_uniform(n, n, d + 2 * n, gen))
        if design.use_forget_gate:  # h-part of F
            self.f_h = nn.Parameter(_uniform(n, n, d + 2 * n, gen))
        u = n * (design.use_new_state + design.use_old_state) + d * design.use_residual
        blocks = [(d, u)] + [(d, d + u)] * design.use_output_gate  # O, then the u-part of P
        self.u_w, self.u_b = _stack(blocks, u, gen), _stack(blocks, None, gen)
        if design.use_output_gate:  # y-part of P
            self.p_y = nn.Parameter(_uniform(d, d, d + u, gen))

    def forward(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        design, n = self.design, self.n
        c = torch.cat((x, s), dim=1)
        if design.use_input_gate:
            c = c * torch.sigmoid(F.linear(c, self.in_w, self.in_b))
        s_in = c[:, n:]
        z = F.linear(c, self.c_w, self.c_b)
        h = torch.tanh(z[:, :n])
        k = n
        if design.use_state_gate:
            g = torch.sigmoid(z[:, k : k + n] + F.linear(h, self.g_h))
            h = g * h + (1 - g) * s
            k += n
        if design.use_forget_gate:
            h = torch.sigmoid(z[:, k : k + n] + F.linear(h, self.f_h)) * h
        parts = [h] * design.use_new_state + [s_in] * design.use_old_state + [x] * design.use_residual
        u = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        yz = F.linear(u, self.u_w, self.u_b)
        if design.use_output_gate:
            y = yz[:, :n]
            y = y * torch.sigmoid(yz[:, n:] + F.linear(y, self.p_y))
        else:
            y = F.silu(yz)
        return y, h.detach()


class ByteModel(nn.Module):
    """Embedding → stacked cells → 256 logits, one byte position per call (spec §2)."""

    def __init__(self, design: Design, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n = design.state_size
        self.design = design
        # The one-hot affine map's weight, stored transposed as a lookup table (fan_in 256).
        self.embed_w = nn.Parameter(_uniform(VOCAB, n, VOCAB, gen))
        self.embed_b = nn.Parameter(_uniform(n, None, VOCAB, gen))
        self.cells = nn.ModuleList(Cell(design, gen) for _ in range(design.n_layers))
        self.head_w = nn.Parameter(_uniform(VOCAB, n, n, gen))
        self.head_b = nn.Parameter(_uniform(VOCAB, None, n, gen))

    def initial_state(self, batch_size: int, device: torch.device) -> list[Tensor]:
        return [torch.zeros(batch_size, self.design.state_size, device=device) for _ in self.cells]

    def forward(self, byte: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        y = F.embedding(byte, self.embed_w) + self.embed_b
        next_states = []
        for cell, s in zip(self.cells, states):
            y, h = cell(y, s)
            next_states.append(h)
        return F.linear(y, self.head_w, self.head_b), next_states


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
