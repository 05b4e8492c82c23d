"""Training speed of the engine against the line-by-line reference (issue: training speed).

For each configuration, trains `--steps` optimiser steps at batch 256 with
the engine (`rnnsweep.model` + the training step of `rnnsweep.train`) and
with the plain implementation (`rnnsweep.reference`, default Adam), each in a
fresh process so peak RSS is its own. Reports steps/s, the ratio, the
engine's GFLOP/s counted from the layer shapes (forward + backward = 3× the
forward matmul work of the cell maps and the output map) and that as a
fraction of the dense matmul rate measured in the same run.

    python benchmarks/speed.py                      # all configurations, CSV to benchmarks/speed.csv
    python benchmarks/speed.py --threads 1 --steps 100
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnsweep.grid import SWITCHES, Design

ALL_ON = dict.fromkeys(SWITCHES, True)
FSR = dict.fromkeys(SWITCHES, False) | {"use_forget_gate": True, "use_state_gate": True, "use_residual": True, "use_new_state": True}
CONFIGS = {
    "1x32 F+SG+res": Design(**FSR, n_layers=1, state_size=32),
    "2x256 F+SG+res": Design(**FSR, n_layers=2, state_size=256),
    "3x256 all": Design(**ALL_ON, n_layers=3, state_size=256),
    "2x512 F+SG+res": Design(**FSR, n_layers=2, state_size=512),
}


def step_flops(design: Design, batch: int) -> float:
    """Forward + backward FLOPs of one step: 3 × 2·B·(weights of every map a step multiplies by)."""
    from rnnsweep.model import ByteModel

    model = ByteModel(design, seed=0)
    weights = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and name != "embed_w")
    return 3 * 2 * batch * weights


def matmul_rate(threads: int, n: int = 512, batch: int = 256, repeats: int = 200) -> float:
    """Best-of-5 GFLOP/s of (batch × n) @ (n × n), the shape that dominates the big cells."""
    torch.set_num_threads(threads)
    a, b = torch.randn(batch, n), torch.randn(n, n)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best = max(best, 2 * batch * n * n * repeats / (time.perf_counter() - start) / 1e9)
    return best


def measure(name: str, impl: str, steps: int, batch: int, threads: int) -> dict:
    """Run in a child process: steps/s (best of 3 timed blocks after a warm-up) and peak RSS."""
    torch.set_num_threads(threads)
    design = CONFIGS[name]
    if impl == "engine":
        from rnnsweep.model import ByteModel

        model = ByteModel(design, seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    else:
        from rnnsweep.reference import ReferenceModel

        model = ReferenceModel(design)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.randint(0, 256, (batch, steps + 1))
    states = model.initial_state(batch, torch.device("cpu"))

    def block() -> float:
        nonlocal states
        start = time.perf_counter()
        for j in range(steps):
            logits, states = model(data[:, j], states)
            loss = F.cross_entropy(logits, data[:, j + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps / (time.perf_counter() - start)

    block()  # warm-up: allocator, lazy imports
    rate = max(block() for _ in range(3))
    return {"steps_per_s": rate, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(name: str, impl: str, steps: int, batch: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, impl, "--steps", str(steps), "--batch", str(batch), "--threads", str(threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per timed block")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("speed.csv"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.batch, args.threads)))
        return
    import pandas as pd

    peak = matmul_rate(args.threads)
    rows = []
    for name in CONFIGS:
        engine = child(name, "engine", args.steps, args.batch, args.threads)
        plain = child(name, "plain", args.steps, args.batch, args.threads)
        gflops = engine["steps_per_s"] * step_flops(CONFIGS[name], args.batch) / 1e9
        rows.append({
            "config": name, "threads": args.threads,
            "engine_steps_s": round(engine["steps_per_s"], 1), "plain_steps_s": round(plain["steps_per_s"], 1),
            "ratio": round(engine["steps_per_s"] / plain["steps_per_s"], 2),
            "engine_gflops": round(gflops, 1), "matmul_gflops": round(peak, 1), "fraction_of_matmul": round(gflops / peak, 2),
            "engine_rss_mb": round(engine["peak_rss_mb"]), "plain_rss_mb": round(plain["peak_rss_mb"]),
        })
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
