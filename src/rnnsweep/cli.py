"""`rnnsweep <command>`: every pipeline step as a command, so each runs without Snakemake.

The Snakemake rules call these commands with values from the validated
profile; a user can call the same commands by hand (for example to add a
worker from another machine that shares the results folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from rnnsweep import config, data
from rnnsweep.aggregate import MissingResults, SummaryError, aggregate, read_summary, write_csv
from rnnsweep.claims import LOCKS, Worker
from rnnsweep.fsutil import UnsafePath
from rnnsweep.grid import BATCH_DESIGNS, PRECISIONS, SETTINGS, ManifestError, make_runs, stage1_designs, write_manifest
from rnnsweep.layout import DATA_DIR, manifest_path

log = logging.getLogger("rnnsweep")

#: Errors that are the user's (or the machine's: a full disk, a read-only folder) to fix: one line, no traceback.
USER_ERRORS = (config.ConfigError, ManifestError, data.DataError, MissingResults, SummaryError, UnsafePath, OSError)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, `rnnsweep <command>: error: ...`, exit 2, as every other."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _training_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training settings written into every manifest row")
    for key in SETTINGS:
        group.add_argument(f"--{key.replace('_', '-')}", type=float if key == "lr" else int, required=True)
    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help="arithmetic of each training step")
    group.add_argument(
        "--batch-designs", choices=BATCH_DESIGNS, default="auto",
        help="auto: train designs of one shape as one superset model where the cost model says it is faster; off: never",
    )
    group.add_argument("--device", default="auto", help="where the workers will train: picks the cost model's device")


def _worker_flags(parser: argparse.ArgumentParser) -> None:
    """How runs are trained: by `worker`, and by `aggregate` for runs it finds without a valid result."""
    parser.add_argument("--data", help="folder with train.bin and valid.bin (default: RESULTS/data)")
    parser.add_argument("--index", type=int, default=0, help="this worker's number (spreads workers over the manifest)")
    parser.add_argument("--count", type=_positive, default=1, help="how many workers there are")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=_positive, default=1)
    parser.add_argument("--lock", choices=LOCKS, default="filelock", help="filelock (flock) or soft (lease, for NFS)")
    parser.add_argument("--lease-s", type=float, default=60.0, help="soft locks: seconds unrefreshed before a lease may be taken over")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints inside a run (0: none)")


def _stage_dir(args: argparse.Namespace) -> Path:
    return Path(args.results) / config.check_stage(args.stage)


def _data_dir(args: argparse.Namespace) -> Path:
    """The corpus splits a study trains on: beside its stages, unless given."""
    return Path(args.data) if args.data else Path(args.results) / DATA_DIR


def cmd_data(args: argparse.Namespace) -> None:
    meta = data.prepare_corpus(
        args.corpus,
        Path(args.out),
        cache_dir=Path(args.cache_dir).expanduser(),
        url=args.url,
        sha256=args.sha256,
        generated_bytes=args.generated_bytes,
        seed=args.seed,
        min_bytes=args.min_bytes,
    )
    log.info("corpus ready: %s", meta)


def cmd_grid(args: argparse.Namespace) -> None:
    from rnnsweep.policy import engine_paths  # the cost model needs torch's view of the device

    designs = stage1_designs(args.n_layers, args.state_sizes)
    runs = make_runs(designs, vars(args), base_seed=args.seed, engine=engine_paths(designs, vars(args)))
    written = write_manifest(manifest_path(Path(args.results) / "stage1"), runs)
    log.info("stage1 manifest: %d runs", len(written))


def cmd_select(args: argparse.Namespace) -> None:
    from rnnsweep import select  # pandas-heavy; only this command needs it

    stage = config.check_stage(args.stage)
    previous = {"stage2": "stage1", "stage3": "stage2"}.get(stage)
    if previous is None:
        raise config.ConfigError("select builds stage2 or stage3; stage1 comes from `rnnsweep grid`")
    needed = {"stage2": ("keep_fraction", "wide_state_size", "deep_layers", "deep_state_sizes"), "stage3": ("top_k", "replicates")}
    missing = [f"--{k.replace('_', '-')}" for k in needed[stage] if getattr(args, k) is None]
    if missing:
        raise config.ConfigError(f"select --stage {stage} needs {' '.join(missing)}")
    summary = read_summary(Path(args.results) / previous / "summary.csv")
    cfg = vars(args)
    runs = select.stage2_runs(summary, cfg, args.seed) if stage == "stage2" else select.stage3_runs(summary, cfg, args.seed)
    if not runs:
        raise config.ConfigError(f"no run of {previous} qualifies for {stage} (none finished ok, or the share kept rounds to 0)")
    written = write_manifest(manifest_path(_stage_dir(args)), runs)
    log.info("%s manifest: %d runs from %s", stage, len(written), previous)


def _worker(args: argparse.Namespace) -> Worker:
    """A claiming worker from the command's training options, stopping cleanly on SIGTERM/SIGINT."""
    import torch  # only training needs it; every other command starts faster without

    torch.set_num_threads(args.threads)
    from rnnsweep.train import keep_freed_memory

    keep_freed_memory()
    worker = Worker(
        stage_dir=_stage_dir(args),
        data_dir=_data_dir(args),
        index=args.index,
        count=args.count,
        device=args.device,
        lock=args.lock,
        checkpoint_every=args.checkpoint_every,
        lease_s=args.lease_s,
    )
    worker.stop_on_signals()
    return worker


def _train(worker: Worker) -> None:
    from rnnsweep.train import Interrupted

    try:
        worker.run()
    except Interrupted as err:
        log.warning("%s; rerun the same command to continue", err)
    if worker.stopped_by is not None:
        # Non-zero, so Snakemake and SLURM see an unfinished job and rerun it.
        raise SystemExit(128 + worker.stopped_by)


def cmd_worker(args: argparse.Namespace) -> None:
    if not 0 <= args.index < args.count:
        raise config.ConfigError(f"--index {args.index} is not below --count {args.count}")
    _train(_worker(args))


def cmd_aggregate(args: argparse.Namespace) -> None:
    """Aggregate; a run without a valid result (damaged, or made under other settings) is trained here first."""
    try:
        summary, curves = aggregate(_stage_dir(args), _data_dir(args))
    except MissingResults as err:
        log.warning("%s: %d runs have no valid result; training them before aggregating", args.stage, len(err.missing))
        _train(_worker(args))
        summary, curves = aggregate(_stage_dir(args), _data_dir(args))
    log.info("%s: %d runs, %d curve points", args.stage, len(summary), len(curves))


def _frames(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    stage_dir = _stage_dir(args)
    return read_summary(stage_dir / "summary.csv"), read_summary(stage_dir / "curves.csv", curves=True)


def cmd_plot(args: argparse.Namespace) -> None:
    from rnnsweep import plots  # matplotlib is slow to import; only plotting needs it

    if args.figure not in plots.FIGURES:
        raise config.ConfigError(f"unknown figure {args.figure!r}; the figures are {', '.join(plots.FIGURES)}")
    summary, curves = _frames(args)
    plots.FIGURES[args.figure](summary, curves, Path(args.out), threshold=args.threshold, top=args.top, smooth=args.smooth)


def cmd_table(args: argparse.Namespace) -> None:
    from rnnsweep import stats

    summary, _ = _frames(args)
    table = stats.regression(summary) if args.table == "regression" else stats.group_table(summary)
    write_csv(table, Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rnnsweep", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("data", help="download or generate the corpus and split it 90/5/5")
    p.add_argument("--corpus", required=True, help="'enwik8', 'generated' or a path to a byte file")
    p.add_argument("--out", default="results/data")
    p.add_argument("--cache-dir", default="~/.cache/rnnsweep")
    p.add_argument("--url", default=data.ENWIK8_URL)
    p.add_argument("--sha256", default=None)
    p.add_argument("--generated-bytes", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-bytes", type=int, default=2, help="fail if a split is shorter (one window)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("grid", help="write the stage-1 manifest (runs already listed keep their order)")
    p.add_argument("--results", default="results")
    p.add_argument("--n-layers", type=int, nargs="+", required=True)
    p.add_argument("--state-sizes", type=int, nargs="+", required=True)
    p.add_argument("--seed", type=int, default=0)
    _training_flags(p)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("select", help="write the stage-2 or stage-3 manifest from the previous summary")
    p.add_argument("--stage", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-fraction", type=float, help="stage2: share of stage 1 kept")
    p.add_argument("--wide-state-size", type=int, help="stage2: extra width for each kept design")
    p.add_argument("--deep-layers", type=int, help="stage2: depth of the deeper variants")
    p.add_argument("--deep-state-sizes", type=int, nargs="+", help="stage2: widths of the deeper variants")
    p.add_argument("--top-k", type=int, help="stage3: designs repeated")
    p.add_argument("--replicates", type=int, help="stage3: seeds per design")
    _training_flags(p)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("worker", help="claim and train unfinished runs of a stage until none is left")
    p.add_argument("--stage", required=True)
    p.add_argument("--results", default="results")
    _worker_flags(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("aggregate", help="write summary.csv and curves.csv of a stage, training any run without a valid result")
    p.add_argument("--stage", required=True)
    p.add_argument("--results", default="results")
    _worker_flags(p)
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("plot", help="render one figure")
    p.add_argument("figure")
    p.add_argument("--stage", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=1.9)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--smooth", type=int, default=10)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("table", help="write an analysis table")
    p.add_argument("table", choices=["regression", "groups"])
    p.add_argument("--stage", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except USER_ERRORS as err:
        print(f"rnnsweep {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
