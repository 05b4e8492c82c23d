"""Designs built by naming the switches that are on, instead of seven positional booleans.

    design("forget_gate", "new_state", n_layers=2, state_size=4)   # every other switch off
    all_on(n_layers=2, state_size=8)                               # all seven switches on

A switch is named by its short name, rnnsweep.design.SWITCHES without the `use_` prefix: input_gate,
forget_gate, output_gate, state_gate, new_state, old_state, residual. A name that is not one of these is
an error, so a typo cannot quietly switch nothing on.

Imports nothing but rnnsweep.design, so that tests/grouping.py (and with it the CUDA tests) stays importable
with little more than PyTorch.
"""

from __future__ import annotations

from rnnsweep.design import SWITCHES, Design

#: Short switch name -> Design field, in the order of SWITCHES.
SWITCH_FIELDS: dict[str, str] = {name.removeprefix("use_"): name for name in SWITCHES}


def design(*on: str, n_layers: int = 1, state_size: int = 8) -> Design:
    """The design with the switches named in `on` (short names) on, the others off."""
    unknown = sorted(set(on) - set(SWITCH_FIELDS))
    if unknown:
        raise ValueError(f"unknown switch {', '.join(unknown)}; the switches are {', '.join(SWITCH_FIELDS)}")
    switches = {field: short in on for short, field in SWITCH_FIELDS.items()}
    return Design(**switches, n_layers=n_layers, state_size=state_size)


def all_on(n_layers: int = 1, state_size: int = 8) -> Design:
    """The design with all seven switches on."""
    return design(*SWITCH_FIELDS, n_layers=n_layers, state_size=state_size)
