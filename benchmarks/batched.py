"""Design-steps per second of the superset path against the same designs trained one by one.

`groups`: groups of every stage-1 design of a shape (96, or the 48 with the
residual below the grid's widest width), at paper scale (batch 256) by default.
The superset path trains the whole group as one model; the design path
trains each design alone, timed on a sample of the group's designs (the
mean step time of the sample stands for the group's). Both run in one
process, alternating, for `--rounds` rounds; reported are the medians and
per-round ratios. Also printed: what rnnsweep.policy predicts for each, so
the cost model can be checked against the clock.

`project`: the predicted training time of stage 1 and stage 2 of a profile
on one device (one worker), under `batch_designs: auto`, from the cost model
in src/rnnsweep/cost_model.yaml. Stage 2's designs depend on stage 1's
results; it is projected for 43 stage-1 designs drawn at random and the
stage-2 rule, which gives about the published 156 runs.

`stage`: a whole stage through real `rnnsweep worker` processes, once with
`--batch-designs off` and once with `auto`, alternating for `--rounds`
rounds, each in a fresh results folder: wall time, and the largest
difference of `min_loss` between the two paths for runs that the two
manifests put on different paths.

    python benchmarks/batched.py groups --threads 2
    python benchmarks/batched.py groups --threads 1 --batch 32 --widest 64 --shapes 1x16 2x16 3x16 1x64 2x64 3x64
    python benchmarks/batched.py groups --device cuda --shapes 1x32 2x256 3x256 2x512 3x512
    python benchmarks/batched.py project --device cuda
    python benchmarks/batched.py stage --profile configs/quick.yaml --corpus ../shared/data/nietzsche.txt
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cost_model import sync  # benchmarks/cost_model.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def step_s(designs: list, superset: bool, batch: int, device: torch.device, steps: int, vocab: int = 256) -> float:
    """Seconds per step of one model of `designs` over `vocab` ids (after one warm-up step)."""
    from rnnsweep.model import ByteModel
    from rnnsweep.optim import Adam

    model = ByteModel(designs, list(range(len(designs))), device=device, superset=superset, vocab=vocab)
    opt = Adam(model.theta, model.grad, 1e-3)
    data = torch.randint(0, vocab, (steps + 2, len(designs), batch), device=device)
    states = model.initial_state(batch)
    for j in range(steps + 1):
        if j == 1:
            sync(device)
            start = time.perf_counter()
        _, states = model.train_step(data[j], data[j + 1], states)
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def graphed_step_s(designs: list, batch: int, device: torch.device, steps: int) -> float:
    """Seconds per step of the superset model with its whole step (forward, backward, Adam) as one CUDA graph.

    The engine's step has static shapes and updates its buffers in place, so
    one capture per shape group serves every step: the replay launches the
    step's ~100 kernels at once instead of one by one from Python.
    """
    from rnnsweep.model import ByteModel
    from rnnsweep.optim import Adam

    model = ByteModel(designs, list(range(len(designs))), device=device, superset=True)
    opt = Adam(model.theta, model.grad, 1e-3)
    byte = torch.randint(0, 256, (len(designs), batch), device=device)
    states = model.initial_state(batch)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
        for _ in range(3):
            model.train_step(byte, byte, states)
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, next_states = model.train_step(byte, byte, states)
        opt.step()

    def step() -> None:
        graph.replay()
        for state, new in zip(states, next_states):
            state.copy_(new)

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def groups(args: argparse.Namespace) -> None:
    from rnnsweep import policy
    from rnnsweep.grid import stage1_designs

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    rng = random.Random(0)
    print("| shape | designs | superset: design-steps/s | one by one: design-steps/s | speed-up, median (range) "
          "| predicted speed-up | GPU memory per group | superset as a CUDA graph: design-steps/s |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        layers, width = map(int, shape.split("x"))
        # The stage-1 designs of this shape: 96, or the 48 with the residual below the grid's widest width.
        designs = [d for d in stage1_designs([layers], [width, args.widest]) if d.state_size == width]
        sample = rng.sample(designs, min(args.sample, len(designs)))
        ratios, superset, alone = [], [], []
        memory = ""
        for _ in range(args.rounds):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            group = step_s(designs, True, args.batch, device, args.steps)
            if device.type == "cuda":
                memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
            one = statistics.fmean(step_s([d], False, args.batch, device, args.steps) for d in sample)
            superset.append(len(designs) / group)
            alone.append(1 / one)
            ratios.append(superset[-1] / alone[-1])
        predicted = policy.design_s(designs, 1, args.batch, kind) / policy.superset_s(designs, 1, args.batch, kind)
        graphed = "—"
        if device.type == "cuda":
            try:
                graphed = f"{len(designs) / graphed_step_s(designs, args.batch, device, args.steps):.1f}"
            except RuntimeError as err:  # a capture that fails is a finding, not a crash of the benchmark
                graphed = f"capture failed: {str(err).splitlines()[0][:80]}"
        print(
            f"| {shape} | {len(designs)} | {statistics.median(superset):.1f} | {statistics.median(alone):.1f} "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {predicted:.2f} | {memory or '—'} "
            f"| {graphed} |",
            flush=True,
        )


def project(args: argparse.Namespace) -> None:
    import pandas as pd

    from rnnsweep import config, policy, select
    from rnnsweep.grid import make_runs, stage1_designs

    cfg = config.load(ROOT / "configs" / "default.yaml", *args.profile)
    kind = policy.device_kind(args.device)
    one, two = cfg["stage1"], cfg["stage2"]
    designs1 = stage1_designs(one["n_layers"], one["state_sizes"])
    kept = random.Random(0).sample(designs1, 43)
    frame = pd.DataFrame([{**d.__dict__, "status": "ok", "min_loss": i, "id": str(i)} for i, d in enumerate(kept)])
    designs2 = [d for d, _ in select.stage2_units(frame, 1.0, two["wide_state_size"], two["deep_layers"], two["deep_state_sizes"])]
    for stage, designs, settings in (("stage1", designs1, one), ("stage2", designs2, two)):
        for mode in ("off", "auto"):
            paths = policy.choose_paths(designs, settings["batch_size"], 1, mode, kind)
            runs = make_runs(designs, settings, engine=lambda design, settings: paths[design])
            groups = policy.run_groups(runs, 1, kind)
            seconds = sum(policy.group_seconds(group, kind) for group in groups)
            on = sum(r.engine == "superset" for r in runs)
            print(f"{stage} ({len(runs)} runs, {on} on the superset path in {len(groups)} groups), {mode}: "
                  f"{seconds / 60:.1f} min predicted on one {kind} worker", flush=True)


def train_stage(args: argparse.Namespace, mode: str, folder: Path) -> tuple[float, dict[str, float], dict[str, str]]:
    """Grid + workers for one mode in `folder`: (wall seconds of training, min_loss by run id, engine by run id)."""
    import pandas as pd

    from rnnsweep import config
    from rnnsweep.cli import worker_command
    from rnnsweep.options import command_args, manifest_args
    from rnnsweep.layout import manifest_path, summary_path

    overrides = {"batch_designs": mode, "device": "cpu", "threads_per_worker": 1, "checkpoint_every": 0}
    cfg = config.load(ROOT / "configs" / "default.yaml", args.profile, overrides=overrides)
    py = [sys.executable, "-m", "rnnsweep"]
    data, manifest = folder / "data", manifest_path(folder / "stage1")
    subprocess.run([*py, "data", "--corpus", str(args.corpus), "--cache-dir", str(folder / "cache"), "--out", str(data)],
                   check=True, capture_output=True)
    grid = [*py, "grid", "--out", str(manifest), *manifest_args(cfg, "stage1")]
    subprocess.run(grid, check=True, capture_output=True)
    start = time.perf_counter()
    workers = [
        subprocess.Popen(worker_command(manifest, data, cfg, i, args.workers), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(args.workers)
    ]
    if any(w.wait() for w in workers):
        raise SystemExit(f"a worker failed in {folder}")
    wall = time.perf_counter() - start
    aggregate = [*py, "aggregate", "--manifest", str(manifest), "--data", str(data), *command_args(cfg, "aggregate")]
    subprocess.run(aggregate, check=True, capture_output=True)
    summary = pd.read_csv(summary_path(manifest.parent))
    return wall, dict(zip(summary["id"], summary["min_loss"])), dict(zip(summary["id"], summary["engine"]))


def stage(args: argparse.Namespace) -> None:
    walls: dict[str, list[float]] = {"off": [], "auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            losses, engines = {}, {}
            for mode in ("off", "auto"):
                folder = Path(tmp) / f"{mode}-{round_}"
                wall, losses[mode], engines[mode] = train_stage(args, mode, folder)
                walls[mode].append(wall)
                shutil.rmtree(folder)
                print(f"round {round_ + 1}: {mode} {wall:.1f} s", flush=True)
            moved = [i for i in losses["off"] if engines["off"][i] != engines["auto"][i]]
            diff = max((abs(losses["off"][i] - losses["auto"][i]) for i in moved), default=0.0)
            print(f"round {round_ + 1}: {len(moved)} runs on the superset path under auto; "
                  f"largest |min_loss(off) - min_loss(auto)| among them {diff:.2e}", flush=True)
    ratios = [off / auto for off, auto in zip(walls["off"], walls["auto"])]
    print(f"off: median {statistics.median(walls['off']):.1f} s; auto: median {statistics.median(walls['auto']):.1f} s; "
          f"per-round off/auto: median {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("groups", help="paper-scale groups, superset vs one by one")
    p.add_argument("--shapes", nargs="+", default=["1x32", "2x256", "3x256"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--widest", type=int, default=256, help="the grid's widest width: narrower shapes are residual-only")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model")
    p.add_argument("--sample", type=int, default=6, help="designs timed one by one per shape")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=groups)
    p = sub.add_parser("project", help="predicted stage-1 and stage-2 training time of a profile on one device")
    p.add_argument("--profile", type=Path, nargs="*", default=[], help="profiles over configs/default.yaml")
    p.add_argument("--device", default="cuda")
    p.set_defaults(func=project)
    p = sub.add_parser("stage", help="a whole stage 1 with batch_designs off and auto, through real workers")
    p.add_argument("--profile", type=Path, default=ROOT / "configs" / "quick.yaml")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=stage)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
