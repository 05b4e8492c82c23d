"""Measure the constants of rnnsweep.policy's cost model on this machine, and optionally write them.

For each path (design, superset) it times training steps over a spread of
depths, widths, batch sizes and group sizes, then fits, by least squares on
relative error,

    seconds per step = overhead + per_layer · L + R · (per_replicate_layer · L + FLOPs / rate + elements · per_element)

where FLOPs is one replicate's matmul work (rnnsweep.policy.step_flops) and
elements its activations (batch × (L·n + 256)), the memory-bound share of a
step. The design path is timed on sampled designs of each shape, one at a
time (R = 1, so its per_replicate_layer is folded into per_layer and fitted as
0); the superset path on groups of R designs of one shape.

    python benchmarks/cost_model.py                       # CPU, print the fit and its residuals
    python benchmarks/cost_model.py --write               # and store it in src/rnnsweep/cost_model.yaml
    python benchmarks/cost_model.py --device cuda --write # on a GPU machine
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from rnnsweep.design import SWITCHES, Design
from rnnsweep.model import ByteModel
from rnnsweep.plan import superset_layout
from rnnsweep.optim import Adam
from rnnsweep.policy import step_elements, step_flops
from rnnsweep.memory import keep_freed_memory

YAML = Path(__file__).resolve().parents[1] / "src" / "rnnsweep" / "cost_model.yaml"
ALL_DESIGNS = [  # the 96 switch settings of a stage-1 shape
    dict(zip(SWITCHES, bits)) for bits in itertools.product((False, True), repeat=len(SWITCHES)) if bits[4] or bits[5]
]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it times the work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_seconds(designs: list[Design], superset: bool, batch: int, device: torch.device, budget_s: float) -> float:
    """Median seconds of one training step of a model of `designs`, over blocks of about `budget_s`."""
    model = ByteModel(designs, list(range(len(designs))), device=device, superset=superset)
    opt = Adam(model.theta, model.grad, 1e-3)
    data = torch.randint(0, 256, (len(designs), batch), device=device)
    states = model.initial_state(batch)

    def block(steps: int) -> float:
        nonlocal states
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            _, states = model.train_step(data, data, states)
            opt.step()
        sync(device)
        return (time.perf_counter() - start) / steps

    once = block(3)  # warm-up, and a first guess of a step's time
    steps = max(3, int(budget_s / max(once, 1e-6)))
    return float(np.median([block(steps) for _ in range(3)]))


def features(layout: Design, replicates: int, batch: int) -> list[float]:
    """The regressors of one measurement: 1, L, R·L, R·FLOPs, R·elements."""
    L = layout.n_layers
    return [1.0, L, replicates * L, replicates * step_flops(layout, batch), replicates * step_elements(layout, batch)]


def measurements(device: torch.device, budget_s: float, rng: random.Random) -> dict[str, list[tuple[list[float], float]]]:
    got: dict[str, list] = {"design": [], "superset": []}
    for layers in (1, 2, 3):
        for width in (8, 32, 128, 256):
            for batch in (16, 64, 256):
                if width * batch > 32 * 256 and device.type == "cpu":
                    continue  # minutes per point on a CPU, and far from where the paths are close
                shape = [Design(**s, n_layers=layers, state_size=width) for s in ALL_DESIGNS]
                for design in rng.sample(shape, 3):
                    got["design"].append((features(design, 1, batch), step_seconds([design], False, batch, device, budget_s)))
                for group in (8, 32) if width <= 32 else (4, 8):
                    members = rng.sample(shape, group)
                    seconds = step_seconds(members, True, batch, device, budget_s)
                    got["superset"].append((features(superset_layout(shape[0]), group, batch), seconds))
                print(f"L={layers} n={width} B={batch}: {len(got['design'])} design, {len(got['superset'])} superset points", flush=True)
    return got


NAMES = ("overhead_s", "per_layer_s", "per_replicate_layer_s", "inverse_rate", "per_element_s")


def fit(points: list[tuple[list[float], float]], grouped: bool) -> tuple[dict[str, float], float]:
    """Non-negative least squares on relative error; returns the constants and the median |relative error|.

    Without groups (`grouped` False) R is 1, so R·L is L: that column is left out and its constant is 0.
    """
    x = np.array([f for f, _ in points])
    y = np.array([t for _, t in points])
    used = [i for i in range(len(NAMES)) if grouped or NAMES[i] != "per_replicate_layer_s"]
    coef = np.zeros(len(NAMES))
    coef[used] = nonnegative_least_squares(x[:, used] / y[:, None], np.ones_like(y))
    error = float(np.median(np.abs(x @ coef - y) / y))
    constants = dict(zip(NAMES, map(float, coef)))
    constants["gflops"] = 1.0 / max(constants.pop("inverse_rate"), 1e-30) / 1e9
    return constants, error


def nonnegative_least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min ||a·c − b|| with c ≥ 0, by dropping the most negative coefficient until none is left (few columns)."""
    active = list(range(a.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (coef >= 0).all():
            out = np.zeros(a.shape[1])
            out[active] = coef
            return out
        del active[int(np.argmin(coef))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as in one worker (threads_per_worker)")
    parser.add_argument("--budget-s", type=float, default=0.15, help="seconds per timed block")
    parser.add_argument("--write", action="store_true", help="store the fit in src/rnnsweep/cost_model.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    device = torch.device(args.device)
    got = measurements(device, args.budget_s, random.Random(0))
    kind = "cuda" if device.type == "cuda" else "cpu"
    text = YAML.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    table = yaml.safe_load(text)
    table.setdefault(kind, {})
    for path, points in got.items():
        constants, error = fit(points, grouped=path == "superset")
        print(f"{kind} {path}: {constants}  median |relative error| {error:.1%} over {len(points)} points")
        order = ("overhead_s", "per_layer_s", "per_replicate_layer_s", "gflops", "per_element_s")
        table[kind][path] = {k: float(f"{constants[k]:.4g}") for k in order}
    table[kind]["measured"] = f"benchmarks/cost_model.py --device {args.device} --threads {args.threads}"
    if args.write:
        YAML.write_text(header + yaml.safe_dump(table, sort_keys=False))
        print(f"wrote {YAML}")


if __name__ == "__main__":
    main()
