"""The flat buffer's plan: every parameter a design's model has, its shape, and where each map's rows and each
input's columns sit in it (docs/study.md §1-2).

The engine (rnnsweep.model) lays its buffer out from this plan, and a result's
parameter count is read from it; it needs no torch, so reading results does not
load the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rnnsweep.design import BYTE_VOCAB, SWITCHES, Design

VOCAB = BYTE_VOCAB  # the byte vocabulary; a model may take another (token ids 0 .. vocab-1)


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


def u_parts(design: Design) -> list[tuple[str, int]]:
    """The inputs of the output map that a design has: h (new state), s_in (old state), x (residual)."""
    return [(part, design.state_size) for part, switch in U_PARTS.items() if getattr(design, switch)]


def plan(design: Design, vocab: int = VOCAB) -> list[Param]:
    """Every parameter of the model over `vocab` symbols, in initialisation order, with each map's rows and fan_in (d == n)."""
    D, n = design, design.state_size
    u = u_parts(design)
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


def count_params(design: Design, vocab: int = VOCAB) -> int:
    return sum(p.numel for p in plan(design, vocab))


def superset_layout(design: Design) -> Design:
    """The layout of the superset path for a design's shape: every part switched on."""
    return design.replace(**dict.fromkeys(SWITCHES, True))
