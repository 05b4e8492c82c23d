"""Small runs and helpers shared by the tests of batched training: replicates, superset groups, CUDA.

Kept free of the config and policy modules (and so of jsonschema), so that the CUDA tests import on a
GPU machine that has little more than PyTorch.
"""

from __future__ import annotations

import threading

from designs import all_on, design
from rnnsweep.design import Design
from rnnsweep.grid import Run, make_runs, stage1_designs

# Batch 4 × state 8 and 4 evaluation windows × 8: each run's block of every activation is whole
# 32-float SIMD steps, where batched kernels compute a run exactly as alone (see test_replicates).
TINY = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-2, eval_bytes=32)
SHAPE = [d for d in stage1_designs([2], [8]) if d.state_size == 8]  # the 96 designs of one shape
#: Four different switch settings of that shape (the superset and CUDA tests rely on these four).
DESIGNS = [
    design("old_state", n_layers=2, state_size=8),
    design("forget_gate", "output_gate", "old_state", "residual", n_layers=2, state_size=8),
    all_on(n_layers=2, state_size=8),
    design("input_gate", "output_gate", "old_state", n_layers=2, state_size=8),
]


def superset_runs(designs: list[Design], **changes) -> list[Run]:
    """Runs of `designs` with TINY settings (and `changes`) on the superset path."""
    return make_runs(designs, TINY | changes, engine=lambda d, s: "superset")


def stop_at(step: int) -> tuple[threading.Event, object]:
    """A stop event and a reporter that sets it once training has logged `step`."""
    stop = threading.Event()

    def report(at: int, ema: float, rate: float) -> None:
        if at >= step:
            stop.set()

    return stop, report
