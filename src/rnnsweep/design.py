"""What a cell design is (docs/study.md §1, §4): seven switches, depth and width, and the id that names it.

A design is pure description: the engine builds its model from one, the
grid (rnnsweep.grid) lists and writes them as manifest rows, the analysis
reads them back from tables. Nothing here reads or writes a file, so the
engine needs nothing of the manifests to know what it builds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

#: The seven switches of a design, in the order of its fields and of every table's columns.
SWITCHES: tuple[str, ...] = (
    "use_input_gate",
    "use_forget_gate",
    "use_output_gate",
    "use_state_gate",
    "use_new_state",
    "use_old_state",
    "use_residual",
)

#: The byte vocabulary: a model over bytes reads and predicts 256 symbols.
BYTE_VOCAB = 256


class DesignError(ValueError):
    """A design that cannot be: no state in the output, no layer or width, a switch that is not on or off."""


@dataclass(frozen=True)
class Design:
    """One cell architecture: the unit that gets an id and is ranked."""

    use_input_gate: bool
    use_forget_gate: bool
    use_output_gate: bool
    use_state_gate: bool
    use_new_state: bool
    use_old_state: bool
    use_residual: bool
    n_layers: int
    state_size: int

    def __post_init__(self) -> None:
        if not (self.use_new_state or self.use_old_state):
            raise DesignError("a cell needs use_new_state or use_old_state")
        if self.n_layers < 1 or self.state_size < 1:
            raise DesignError("n_layers and state_size must be positive")

    @property
    def id(self) -> str:
        """First 10 hex digits of the SHA-256 of the canonical JSON form."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]

    @classmethod
    def from_mapping(cls, row) -> "Design":
        """Build from any mapping (a CSV or DataFrame row), coercing to plain Python types so ids stay stable."""
        switches = {k: _parse_bool(row[k], f"column {k}") if isinstance(row[k], str) else bool(row[k]) for k in SWITCHES}
        return cls(**switches, n_layers=int(row["n_layers"]), state_size=int(row["state_size"]))

    def replace(self, **changes: int | bool) -> "Design":
        return Design(**{**asdict(self), **changes})


def _parse_bool(text: str, where: str) -> bool:
    if text in ("True", "true", "1"):
        return True
    if text in ("False", "false", "0"):
        return False
    raise DesignError(f"{where}: expected True or False, got {text!r}")
