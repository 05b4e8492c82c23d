"""What a training step costs reading BPE tokens instead of bytes, at the same width.

A BPE model differs from a byte model only in its input lookup and output map:
`vocab` rows and `vocab` logits instead of 256. For each width, one model of
the stage-3 kind (one design, `--replicates` seeds batched, the design path)
is timed per step at vocabulary 256 and at each `--vocabs`, alternating within
each of `--rounds` rounds so that the machine's load falls on both alike;
reported are the median seconds per step and the median of the per-round
ratios to the byte step.

Also `--encode CORPUS`: seconds to learn a vocabulary from the first 90 % of a
file and to encode it (what `rnnsweep tokenize` does), and bytes per token.

    python benchmarks/tokens.py --widths 64 128 --batch 32 --vocabs 2048
    python benchmarks/tokens.py --widths 256 512 --batch 256 --vocabs 2048 8192 --device cuda
    python benchmarks/tokens.py --encode ../shared/data/nietzsche.txt --vocabs 1024 2048 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from batched import step_s  # benchmarks/batched.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rnnsweep.design import Design  # noqa: E402
from rnnsweep.tokens import encode, train_bpe  # noqa: E402


def finalist(layers: int, width: int) -> Design:
    """The published stage-1 best (docs/study.md §7): forget and state gates, residual path, new state."""
    return Design(use_input_gate=False, use_forget_gate=True, use_output_gate=False, use_state_gate=True,
                  use_new_state=True, use_old_state=False, use_residual=True, n_layers=layers, state_size=width)


def steps(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    print(f"{args.layers} layers, {args.replicates} replicates, batch {args.batch}, {args.steps} steps per timing, "
          f"{args.rounds} rounds, {torch.get_num_threads()} threads, {device}")
    print("width  vocab  ms/step (median)  ratio to bytes (median of rounds)")
    for width in args.widths:
        times: dict[int, list[float]] = {v: [] for v in (256, *args.vocabs)}
        for _ in range(args.rounds):
            for vocab in times:
                seeds = [finalist(args.layers, width)] * args.replicates  # the design path, as stage 3 trains
                times[vocab].append(step_s(seeds, False, args.batch, device, args.steps, vocab))
        for vocab, values in times.items():
            ratio = statistics.median(v / b for v, b in zip(values, times[256]))
            print(f"{width:5d}  {vocab:5d}  {1e3 * statistics.median(values):16.2f}  {ratio:.2f}")


def tokenize(args: argparse.Namespace) -> None:
    raw = Path(args.encode).read_bytes()
    train = raw[: len(raw) * 9 // 10]
    print(f"{args.encode}: {len(train):,} training bytes")
    print("vocab  learn s  encode s  bytes/token")
    for vocab in args.vocabs:
        start = time.perf_counter()
        tokenizer = train_bpe(train, vocab)
        learnt = time.perf_counter()
        ids = encode(tokenizer, train)
        done = time.perf_counter()
        print(f"{vocab:5d}  {learnt - start:7.2f}  {done - learnt:8.2f}  {len(train) / len(ids):11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--vocabs", type=int, nargs="+", default=[2048])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--replicates", type=int, default=10, help="seeds batched, as stage 3 trains them")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encode", help="a corpus file: time learning and encoding instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenize(args) if args.encode else steps(args)


if __name__ == "__main__":
    main()
