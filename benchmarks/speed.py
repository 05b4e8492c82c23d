"""Training speed of the engine against the plain line-by-line implementation (issue: training speed).

For each configuration, trains blocks of `--steps` optimiser steps at batch
256 with the engine (`rnnsweep.model` + `rnnsweep.optim`, as `rnnsweep.train`
runs them) and with the plain implementation (`rnnsweep.reference`: one-hot
input, one nn.Linear per map, autograd, default Adam). Each measurement runs
in a fresh process, so its peak RSS is its own, and engine and plain processes
alternate for `--rounds` rounds so that a slow patch of a shared machine hits
both; each figure is the best block seen. The dense matmul rate is measured the same
way, in each round, beside every configuration.

Reported per configuration: steps/s of each and their ratio; the median
and range of the per-round ratios (engine and plain run back to back in a
round, so each round's ratio sees one state of a noisy machine); the engine's
GFLOP/s counted from the layer shapes (forward + backward = 3 × the forward
matmul work of every map and the output map; the embedding is a lookup) and
that as a fraction of the dense matmul rate measured in the same run; peak
RSS; replicate-steps/s of `--replicates` seeds trained as one batched model
and its speed-up over training them one by one; with `--bf16`, the engine's
steps/s in bfloat16.

    python benchmarks/speed.py                      # all configurations → benchmarks/speed.csv
    python benchmarks/speed.py --threads 1 --bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnsweep.design import SWITCHES, Design
from rnnsweep.model import ByteModel
from rnnsweep.optim import Adam
from rnnsweep.policy import step_flops
from rnnsweep.reference import ReferenceModel
from rnnsweep.memory import keep_freed_memory

ALL_ON = dict.fromkeys(SWITCHES, True)
FSR = dict.fromkeys(SWITCHES, False) | {"use_forget_gate": True, "use_state_gate": True, "use_residual": True, "use_new_state": True}
CONFIGS = {
    "1x32 F+SG+res": Design(**FSR, n_layers=1, state_size=32),
    "2x256 F+SG+res": Design(**FSR, n_layers=2, state_size=256),
    "3x256 all": Design(**ALL_ON, n_layers=3, state_size=256),
    "2x512 F+SG+res": Design(**FSR, n_layers=2, state_size=512),
}


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


def matmul_child(threads: int) -> float:
    """The matmul rate in a fresh process, like every other measurement."""
    cmd = [sys.executable, __file__, "--matmul-child", "--threads", str(threads)]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def _engine_step(design: Design, batch: int, replicates: int, compute_dtype: torch.dtype):
    model = ByteModel(design, seeds=list(range(replicates)), compute_dtype=compute_dtype)
    opt = Adam(model.theta, model.grad, lr=1e-3)
    states = model.initial_state(batch)

    def step(byte: torch.Tensor, target: torch.Tensor) -> None:
        nonlocal states
        _, states = model.train_step(byte.expand(replicates, -1), target.expand(replicates, -1), states)
        opt.step()

    return step


def _plain_step(design: Design, batch: int):
    model = ReferenceModel(design)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    states = model.initial_state(batch, torch.device("cpu"))

    def step(byte: torch.Tensor, target: torch.Tensor) -> None:
        nonlocal states
        logits, states = model(byte, states)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(name: str, impl: str, steps: int, batch: int, threads: int, blocks: int) -> dict:
    """In a child process: steps/s (best of `blocks` timed blocks after a warm-up) and peak RSS."""
    torch.set_num_threads(threads)
    keep_freed_memory()  # as a worker does; for both implementations
    design = CONFIGS[name]
    kind, _, arg = impl.partition(":")
    if kind == "plain":
        step = _plain_step(design, batch)
    else:
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        step = _engine_step(design, batch, int(arg or 1), dtype)
    # Positions first, as the training loop lays its windows out: each step reads a contiguous row.
    data = torch.randint(0, 256, (steps + 1, batch))

    def block() -> float:
        start = time.perf_counter()
        for j in range(steps):
            step(data[j], data[j + 1])
        return steps / (time.perf_counter() - start)

    block()  # warm-up: allocator, lazy imports
    rate = max(block() for _ in range(blocks))
    return {"steps_per_s": rate, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(name: str, impl: str, steps: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--child", name, impl, "--steps", str(steps),
        "--batch", str(args.batch), "--threads", str(args.threads), "--blocks", str(args.blocks),
    ]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def best_of(name: str, impls: dict[str, int], args: argparse.Namespace) -> tuple[dict[str, dict], list[float]]:
    """Alternate the implementations' processes (and the matmul rate's) for `rounds` rounds.

    Returns each one's best, and the engine/plain ratio of every round: the
    two run back to back, so a round's ratio sees one state of the machine.
    """
    best: dict[str, dict] = {"matmul": {"steps_per_s": 0.0}}
    paired = []
    for _ in range(args.rounds):
        best["matmul"]["steps_per_s"] = max(best["matmul"]["steps_per_s"], matmul_child(args.threads))
        this_round = {}
        for impl, steps in impls.items():
            got = this_round[impl] = child(name, impl, steps, args)
            prev = best.get(impl, {"steps_per_s": 0.0, "peak_rss_mb": 0.0})
            best[impl] = {k: max(prev[k], got[k]) for k in got}
        paired.append(this_round["engine"]["steps_per_s"] / this_round["plain"]["steps_per_s"])
    return best, paired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks per process")
    parser.add_argument("--rounds", type=int, default=5, help="alternating engine/plain processes per configuration")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--replicates", type=int, default=10, help="seeds trained as one batched model (stage 3)")
    parser.add_argument("--bf16", action="store_true", help="also time the engine in bfloat16")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("speed.csv"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--matmul-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.batch, args.threads, args.blocks)))
        return
    if args.matmul_child:
        print(matmul_rate(args.threads))
        return
    import pandas as pd

    rows = []
    for name in args.configs:
        reps = f"engine:{args.replicates}"
        impls = {"engine": args.steps, "plain": args.steps, reps: max(5, args.steps // args.replicates)}
        if args.bf16:
            impls["bf16"] = max(5, args.steps // 10)
        got, paired = best_of(name, impls, args)
        engine, plain, peak = (got[k]["steps_per_s"] for k in ("engine", "plain", "matmul"))
        gflops = engine * step_flops(CONFIGS[name], args.batch) / 1e9
        batched = got[reps]["steps_per_s"] * args.replicates
        row = {
            "config": name, "threads": args.threads,
            "engine_steps_s": round(engine, 1), "plain_steps_s": round(plain, 1), "ratio": round(engine / plain, 2),
            "round_ratio_median": round(statistics.median(paired), 2),
            "round_ratio_range": f"{min(paired):.2f}-{max(paired):.2f}",
            "engine_gflops": round(gflops, 1), "matmul_gflops": round(peak, 1), "fraction_of_matmul": round(gflops / peak, 2),
            "engine_rss_mb": round(got["engine"]["peak_rss_mb"]), "plain_rss_mb": round(got["plain"]["peak_rss_mb"]),
            f"batched{args.replicates}_replicate_steps_s": round(batched, 1), "batched_speedup": round(batched / engine, 2),
        }
        if args.bf16:
            row["bf16_steps_s"] = round(got["bf16"]["steps_per_s"], 2)
        rows.append(row)
        print(f"measured {name}", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
