"""Which path trains each design (`batch_designs: auto | off`), and how a stage's runs are grouped for workers.

A step of a small cell is dozens of kernel calls of a few microseconds, so
its time is mostly per-step overhead; a step of a large cell is mostly
matmul arithmetic. The superset path (rnnsweep.model) pays one step's
overhead for a whole group of designs of one shape, but computes every part
for every design, the switched-off ones included. The cost model weighs the
two from measured constants (`cost_model.yaml`, written by
`benchmarks/cost_model.py`), per kind of device:

    seconds per step = overhead + per_layer · L
                       + R · (per_replicate_layer · L + FLOPs / rate + elements · per_element)

for a group of R replicates of L layers, where FLOPs is one replicate's
matmul work and elements its activations (the memory-bound share), with one
set of constants for each path (the design path trains one design at a
time in stages 1 and 2, so its per-replicate-layer cost is part of per_layer). `auto` takes the superset path for
a shape where its groups train that shape's designs in less time than the
design path does; `off` always takes the design path. The path is decided
when a manifest is written and is a column of it, so it is part of every
run's fingerprint: a checkpoint or result of the other path is never used,
and a manifest written again with another path for a run trains it anew.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Iterable

import yaml

from rnnsweep import config
from rnnsweep.config import ConfigError
from rnnsweep.design import Design
from rnnsweep.grid import BATCH_DESIGNS, EnginePick, Run
from rnnsweep.plan import VOCAB, plan, superset_layout

#: `auto` takes the superset path only where it is predicted this many times faster: the fitted model's
#: median error is 15–20 % (benchmarks/cost_model.py), and near a tie the design path wastes nothing.
MARGIN = 1.25
BYTES = 4  # float32 parameters, gradients, Adam moments and activations
#: Floats of activations one layer keeps per batch row and unit of width (xs, a, c, z, h0, g, h1, f, u, yz, q, y and
#: their gradients, rounded up), and the head's per batch row: logits, softmax, gradient.
ACTIVATIONS_PER_LAYER = 40
ACTIVATIONS_HEAD = 4  # per entry of the vocabulary


@dataclass(frozen=True)
class PathCost:
    """Measured constants of one path on one kind of device."""

    overhead_s: float  # per step, whatever the size
    per_layer_s: float  # per step and layer
    per_replicate_layer_s: float  # per step, layer and replicate: each replicate's share of a batched kernel
    gflops: float  # rate of the step's matmul work, GFLOP/s
    per_element_s: float  # per activation element of a step

    def step_s(self, layers: int, replicates: int, flops: float, elements: float) -> float:
        """Seconds of one step of `replicates` with `flops` and `elements` in all."""
        fixed = self.overhead_s + self.per_layer_s * layers + self.per_replicate_layer_s * replicates * layers
        return fixed + flops / (self.gflops * 1e9) + elements * self.per_element_s


@dataclass(frozen=True)
class DeviceCost:
    design: PathCost
    superset: PathCost
    memory_bytes: int  # what one worker's group may take


COST_MODEL = "cost_model.yaml"
DEVICE = re.compile(config.node(("device",))["pattern"])  # auto, cpu, cuda or cuda:N


@cache
def device_cost(kind: str) -> DeviceCost:
    """The constants for `cpu` or `cuda` from the packaged cost_model.yaml."""
    path = resources.files("rnnsweep").joinpath(COST_MODEL)
    try:
        table = yaml.safe_load(path.read_text())[kind]
        return DeviceCost(PathCost(**table["design"]), PathCost(**table["superset"]), int(table["group_memory_gib"] * 2**30))
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: no usable cost model for {kind} ({err!r}); refit it with benchmarks/cost_model.py") from None


def check_device(device: str) -> None:
    """Refuse a device name this machine has no such device for, before any run is claimed."""
    if device_kind(device) != "cuda":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        raise ConfigError(f"device {device!r}: this machine's PyTorch sees {count} CUDA device{'s' * (count != 1)}; use auto or cpu")


def device_kind(device: str) -> str:
    """`cpu` or `cuda` for a device name (auto, cpu, cuda, cuda:N); `auto` is what this machine has."""
    if not DEVICE.fullmatch(device):
        raise ConfigError(f"device {device!r} is not auto, cpu, cuda or cuda:N")
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def step_flops(layout: Design, batch_size: int, vocab: int = VOCAB) -> float:
    """Forward + backward FLOPs of one replicate's step: 3 × 2·batch·(entries of every matrix it multiplies by)."""
    return 6 * batch_size * sum(p.numel for p in plan(layout, vocab) if len(p.shape) == 2 and p.name != "embed_w")


def step_elements(layout: Design, batch_size: int, vocab: int = VOCAB) -> int:
    """One replicate's activations of a step, the memory-bound share of its time: batch × (L·n + vocab)."""
    return batch_size * (layout.n_layers * layout.state_size + vocab)


def replicate_bytes(layout: Design, batch_size: int, vocab: int = VOCAB) -> int:
    """Memory of one replicate in a group: parameters, gradient and two Adam moments, and one step's activations."""
    params = sum(p.numel for p in plan(layout, vocab))
    activations = batch_size * (layout.n_layers * layout.state_size * ACTIVATIONS_PER_LAYER + ACTIVATIONS_HEAD * vocab)
    return BYTES * (4 * params + activations)


def max_group(layout: Design, batch_size: int, kind: str, vocab: int = VOCAB) -> int:
    """The most replicates one group of this layout may hold within the device's memory budget (at least 1)."""
    return max(1, device_cost(kind).memory_bytes // replicate_bytes(layout, batch_size, vocab))


def group_step_s(layout: Design, replicates: int, batch_size: int, path: str, kind: str, vocab: int = VOCAB) -> float:
    """Predicted seconds of one step of a group of `replicates` on `path`."""
    cost = getattr(device_cost(kind), path)
    flops, elements = step_flops(layout, batch_size, vocab), step_elements(layout, batch_size, vocab)
    return cost.step_s(layout.n_layers, replicates, replicates * flops, replicates * elements)


def _in_groups_s(layout: Design, replicates: int, batch_size: int, path: str, kind: str, vocab: int) -> float:
    """Seconds per step to train `replicates` of one layout in groups as large as memory allows."""
    cap = max_group(layout, batch_size, kind, vocab)
    full, rest = divmod(replicates, cap)
    last = group_step_s(layout, rest, batch_size, path, kind, vocab) if rest else 0.0
    return full * group_step_s(layout, cap, batch_size, path, kind, vocab) + last


def superset_s(designs: list[Design], copies: int, batch_size: int, kind: str, vocab: int = VOCAB) -> float:
    """Predicted seconds per step to train `copies` of each design (all of one shape) on the superset path."""
    return _in_groups_s(superset_layout(designs[0]), len(designs) * copies, batch_size, "superset", kind, vocab)


def design_s(designs: list[Design], copies: int, batch_size: int, kind: str, vocab: int = VOCAB) -> float:
    """Predicted seconds per step to train `copies` of each design on the design path, a design's copies together."""
    return sum(_in_groups_s(d, copies, batch_size, "design", kind, vocab) for d in designs)


def choose_paths(
    designs: Iterable[Design], batch_size: int, copies: int, mode: str, kind: str, vocab: int = VOCAB
) -> dict[Design, str]:
    """Each design's path: for `auto`, per shape, the superset path where it is predicted MARGIN times faster."""
    if mode not in BATCH_DESIGNS:
        raise ConfigError(f"batch_designs must be one of {', '.join(BATCH_DESIGNS)}, not {mode!r}")
    by_shape: dict[tuple[int, int], list[Design]] = {}
    for design in designs:
        by_shape.setdefault((design.n_layers, design.state_size), []).append(design)
    paths = {}
    for group in by_shape.values():
        superset = superset_s(group, copies, batch_size, kind, vocab)
        faster = mode == "auto" and MARGIN * superset < design_s(group, copies, batch_size, kind, vocab)
        paths.update(dict.fromkeys(group, "superset" if faster else "design"))
    return paths


def engine_paths(designs: list[Design], settings: dict, copies: int = 1) -> EnginePick:
    """The path of each run as a manifest asks: `settings` holds batch_designs and device, and the vocabulary's
    size where the runs read BPE tokens; a run's own batch size (an axis may list several) weighs its cost."""
    kind = device_kind(settings["device"])
    vocab = settings.get("vocab_size") if settings.get("tokenizer") == "bpe" else VOCAB

    @functools.cache
    def paths(batch_size: int) -> dict[Design, str]:
        return choose_paths(designs, batch_size, copies, settings["batch_designs"], kind, vocab)

    return lambda design, picked: paths(picked.batch_size)[design]


def run_groups(runs: list[Run], workers: int, kind: str) -> list[list[Run]]:
    """The stage's runs in groups that train as one model, longest predicted first.

    Runs of one batch key (rnnsweep.grid.Run.batch_key) form a group, split
    so that it fits the device's memory and so that a key with a large share
    of the stage's work is spread over that share of the workers; longest
    first, so that no worker starts a long group while the others finish.
    Only the grouping depends on this: a run's numbers do not (rnnsweep.train).
    """
    workers = max(workers, 1)
    keyed: dict[tuple, list[Run]] = {}
    for run in runs:
        keyed.setdefault(run.batch_key, []).append(run)
    groups = []
    for members in keyed.values():
        first = members[0]
        layout = _run_layout(first)
        share = math.ceil(len(members) * workers / len(runs))
        size = min(max_group(layout, first.settings.batch_size, kind, first.vocab_size), math.ceil(len(members) / share))
        groups += [members[i : i + size] for i in range(0, len(members), size)]

    return sorted(groups, key=lambda group: group_seconds(group, kind), reverse=True)


def group_seconds(group: list[Run], kind: str) -> float:
    """Predicted seconds to train a group (of one batch key) from its first step to its last."""
    run = group[0]
    return run.settings.steps * group_step_s(_run_layout(run), len(group), run.settings.batch_size, run.engine, kind, run.vocab_size)


def _run_layout(run: Run) -> Design:
    return superset_layout(run.design) if run.engine == "superset" else run.design
