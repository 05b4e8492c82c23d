"""`rnnsweep <command>`: every pipeline step as a command, so each runs without Snakemake.

The Snakemake rules call these commands with the files they read and write
and with values from the validated profile; a user can call the same commands
by hand (for example to add a worker from another machine that shares the
results folder). Options that a profile sets are made from the profile schema
by rnnsweep.options, which also turns a profile into them for the rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from rnnsweep import config, data, figures
from rnnsweep.aggregate import MissingResults, SummaryError, aggregate, read_summary, write_csv
from rnnsweep.claims import Worker
from rnnsweep.costs import BenchmarkError, costs, read_benchmarks
from rnnsweep.design import BYTE_VOCAB, DesignError
from rnnsweep.fsutil import UnsafePath
from rnnsweep.grid import (
    ManifestError, make_runs, read_manifest, stage1_designs, vocabulary_problem, write_manifest,
)
from rnnsweep.layout import DYNAMICS_FIGURES, MANIFEST, RANKED_TABLES, STAGE_TABLES, SWEEP_TABLES, curves_path, data_dir_of, stage_of, summary_path
from rnnsweep.options import COMMANDS, add_command_options, add_options, command_args, keys, manifest_keys, option

log = logging.getLogger("rnnsweep")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Errors that are the user's (or the machine's: a full disk, a read-only folder) to fix: one line, no traceback.
USER_ERRORS = (
    config.ConfigError, ManifestError, DesignError, data.DataError, MissingResults, SummaryError, BenchmarkError, UnsafePath,
    OSError,
)


def worker_args(manifest: Path, data_dir: Path, profile: Mapping, index: int = 0, count: int = 1) -> list[str]:
    """The arguments of worker `index` of `count` on a stage, with a profile's training options."""
    where = ["--manifest", str(manifest), "--data", str(data_dir), "--index", str(index), "--count", str(count)]
    return ["worker", *where, *command_args(profile, "worker")]


def worker_command(manifest: Path, data_dir: Path, profile: Mapping, index: int = 0, count: int = 1) -> list[str]:
    """`worker_args` as a process to start, with the Python running this one."""
    return [sys.executable, "-m", "rnnsweep", *worker_args(manifest, data_dir, profile, index, count)]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, `rnnsweep <command>: error: ...`, exit 2, as every other."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _dynamics_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="the folder of the splits (default: data/ beside the stage folders)")
    parser.add_argument("--seed", type=config.option_type("seed"), default=0,
                        help="of the substituted states and the attractors' starting states")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="torch threads (dynamics --stage: processes measuring groups of runs side by side, one thread each)")


def _reading_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """What the runs read: `--tokenizer`, and with bpe `--vocab-size` (which a byte study is not passed)."""
    add_options(parser, keys("tokenizer") + keys("vocab_size", required=False))


def _reading(args: argparse.Namespace) -> dict:
    """The runs' tokenizer and vocabulary size from the options, checked."""
    vocab = BYTE_VOCAB if args.tokenizer == "bytes" else args.vocab_size
    if vocab is None:
        raise config.ConfigError(f"--tokenizer {args.tokenizer} needs {option('vocab_size')}")
    problem = vocabulary_problem(args.tokenizer, vocab)
    if problem:
        raise config.ConfigError(problem)
    return {"tokenizer": args.tokenizer, "vocab_size": vocab}


def _manifest_options(parser: argparse.ArgumentParser, stages: Iterable[str]) -> None:
    """A manifest's keys (rnnsweep.options.manifest_keys) of `stages`, each once, and what its runs read."""
    group = parser.add_argument_group("settings written into every manifest row")
    add_options(group, [key for stage in stages for key in manifest_keys(stage)])
    _reading_options(group)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    """Where runs are trained, by `worker`, and by `aggregate` for runs it finds without a valid result."""
    parser.add_argument("--manifest", required=True, help="the stage's manifest.csv; its folder is the stage's")
    parser.add_argument("--data", help="folder with the splits (default: data/ beside the stage folders)")
    parser.add_argument("--index", type=int, default=0, help="this worker's number (spreads workers over the manifest)")
    parser.add_argument("--count", type=_positive, default=1, help="how many workers there are")


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data) if args.data else data_dir_of(stage_of(args.manifest))


def _check_training_options(args: argparse.Namespace) -> None:
    """What `worker` and `aggregate` are given, checked before anything is read or trained: a stage's manifest
    (the file `manifest.csv` in the stage's folder, which holds the runs) and a device this machine has."""
    from rnnsweep.policy import check_device

    manifest = Path(args.manifest)
    if not manifest.is_file():
        raise ManifestError(f"--manifest {manifest}: not found")
    if manifest.name != MANIFEST:
        raise ManifestError(f"--manifest {manifest}: a stage's manifest is the {MANIFEST} in its folder, where its runs live")
    check_device(args.device)


def cmd_data(args: argparse.Namespace) -> None:
    meta = data.prepare_corpus(
        args.corpus,
        Path(args.out),
        cache_dir=Path(args.cache_dir).expanduser(),
        url=args.enwik8_url,
        sha256=args.enwik8_sha256,
        generated_bytes=args.generated_bytes,
        seed=args.seed,
        min_bytes=args.min_bytes,
    )
    log.info("corpus ready: %s", meta)


def cmd_grid(args: argparse.Namespace) -> None:
    from rnnsweep.policy import engine_paths  # the cost model needs torch's view of the device

    designs = stage1_designs(args.n_layers, args.state_sizes)
    settings = {**vars(args), **_reading(args)}
    runs = make_runs(designs, settings, base_seed=args.seed, engine=engine_paths(designs, settings))
    _check_size(config.STAGES[0], runs, args)
    written = write_manifest(Path(args.out), runs)
    log.info("stage1 manifest: %d runs", len(written))


def _check_size(stage: str, runs: list, args: argparse.Namespace) -> None:
    if len(runs) > args.max_stage_runs:
        raise config.ConfigError(f"{stage}: {len(runs)} runs, more than --max-stage-runs ({args.max_stage_runs}); raise it to run them")


def cmd_select(args: argparse.Namespace) -> None:
    from rnnsweep import select

    stage = config.check_stage(args.stage)
    if stage == config.STAGES[0]:
        raise config.ConfigError("select builds stage2 or stage3; stage1 comes from `rnnsweep grid`")
    missing = [option(key) for key in config.design_keys(stage) if getattr(args, key) is None]
    if missing:
        raise config.ConfigError(f"select --stage {stage} needs {' '.join(missing)}")
    runs = select.SELECTIONS[stage](read_summary(Path(args.summary)), {**vars(args), **_reading(args)})
    if not runs:
        raise config.ConfigError(f"no run of {args.summary} qualifies for {stage} (none finished ok, or the share kept rounds to 0)")
    _check_size(stage, runs, args)
    written = write_manifest(Path(args.out), runs)
    log.info("%s manifest: %d runs from %s", stage, len(written), args.summary)


def cmd_tokenize(args: argparse.Namespace) -> None:
    from rnnsweep.tokens import prepare_tokens

    meta = prepare_tokens(Path(args.data), args.vocab_size)
    counts = ", ".join(f"{split} {part['tokens']:,} ids for {part['bytes']:,} bytes" for split, part in meta["splits"].items())
    log.info("vocabulary of %d pieces: %s", meta["vocab_size"], counts)


def cmd_retokenize(args: argparse.Namespace) -> None:
    """The manifest's runs again, reading other tokens: the same ids, seeds, settings and paths."""
    reading = _reading(args)
    runs = [dataclasses.replace(run, **reading) for run in read_manifest(Path(args.manifest))]
    if not runs:
        raise ManifestError(f"{args.manifest} lists no runs")
    write_manifest(Path(args.out), runs)
    log.info("%d runs of %s, reading %s", len(runs), args.manifest, args.tokenizer)


def cmd_tokenizers(args: argparse.Namespace) -> None:
    from rnnsweep import plots
    from rnnsweep.stats import tokenizer_table

    summaries = [read_summary(Path(path)) for path in args.summary]
    table = tokenizer_table(*summaries)
    plots.tokenizers(table, summaries, Path(args.figure))
    write_csv(table, Path(args.out))


def cmd_corpora(args: argparse.Namespace) -> None:
    import pandas as pd

    from rnnsweep import corpora, plots

    studies = {name: Path(folder) for name, folder in args.study}
    if len(studies) < 2:
        raise data.DataError("--study: give two corpora's studies or more, as NAME FOLDER each")
    stages = [stage for stage in config.STAGES if all((folder / stage).is_dir() for folder in studies.values())]
    summaries = {stage: corpora.stage_summaries(studies, stage) for stage in stages}
    marginals = {name: pd.read_csv(folder / corpora.EFFECTS_STAGE / corpora.MARGINALS) for name, folder in studies.items()}
    plots.corpora(summaries[corpora.EFFECTS_STAGE], Path(args.figure), rank_by=args.rank_by)
    write_csv(corpora.switch_effects(marginals), Path(args.effects))
    write_csv(corpora.agreement(summaries, args.rank_by), Path(args.out))


def _worker(args: argparse.Namespace, thorough: bool = False) -> Worker:
    """A claiming worker from the command's training options, stopping cleanly on SIGTERM/SIGINT."""
    import torch  # only training needs it; every other command starts faster without

    from rnnsweep.memory import keep_freed_memory

    if args.lock == "soft" and args.lock_lease_s is None:
        raise config.ConfigError("--lock soft needs --lock-lease-s")
    torch.set_num_threads(args.threads_per_worker)
    keep_freed_memory()
    worker = Worker(
        stage_dir=stage_of(args.manifest),
        data_dir=_data_dir(args),
        index=args.index,
        count=args.count,
        device=args.device,
        lock=args.lock,
        checkpoint_every=args.checkpoint_every,
        lease_s=args.lock_lease_s,
        thorough=thorough,
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
    _check_training_options(args)
    if not 0 <= args.index < args.count:
        raise config.ConfigError(f"--index {args.index} is not below --count {args.count}")
    if args.history:
        handler = logging.FileHandler(args.history, mode="a")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
    _train(_worker(args))


def cmd_aggregate(args: argparse.Namespace) -> None:
    """Aggregate; a run without a valid result (damaged, or made under other settings) is trained here first."""
    _check_training_options(args)
    stage_dir = stage_of(args.manifest)
    outputs = Path(args.summary or summary_path(stage_dir)), Path(args.curves or curves_path(stage_dir))
    try:
        summary, curves = aggregate(stage_dir, _data_dir(args), *outputs)
    except MissingResults as err:
        log.warning("%s: %d runs have no valid result; training them before aggregating", stage_dir.name, len(err.missing))
        _train(_worker(args, thorough=True))
        summary, curves = aggregate(stage_dir, _data_dir(args), *outputs)
    log.info("%s: %d runs, %d curve points", stage_dir.name, len(summary), len(curves))


def cmd_status(args: argparse.Namespace) -> None:
    """Print where the study stands; with --watch, redraw it in place until interrupted."""
    from rnnsweep.status import render

    if not args.watch:
        print(render(Path(args.results)))
        return
    try:
        while True:
            print("\033[H\033[2J" + render(Path(args.results)), flush=True)  # home, clear, draw
            time.sleep(args.every)
    except KeyboardInterrupt:
        pass


def cmd_plot(args: argparse.Namespace) -> None:
    from rnnsweep.baselines import check_same_bytes, read_baselines

    named = figures.by_name(figures.STAGE_FIGURES + figures.SWEEP_FIGURES)
    if args.figure not in named:
        raise config.ConfigError(f"unknown figure {args.figure!r}; the figures are {', '.join(named)}")
    summary, curves = read_summary(Path(args.summary)), read_summary(Path(args.curves), curves=True)
    options = {key.name: getattr(args, key.name) for key in COMMANDS["plot"]}
    if args.baselines:
        options["baselines"] = read_baselines(Path(args.baselines))
        check_same_bytes(options["baselines"], summary, f"the runs of {args.summary}")
    named[args.figure].drawer()(summary, curves, Path(args.out), **options)


def cmd_plot_dynamics(args: argparse.Namespace) -> None:
    import pandas as pd

    from rnnsweep.layout import DYNAMICS_CURVES, DYNAMICS_TABLES

    stage = Path(args.stage)
    try:
        tables = {name: pd.read_csv(stage / name) for name in DYNAMICS_TABLES}
    except (OSError, ValueError) as err:
        raise SummaryError(f"{stage} has no complete dynamics tables ({err}); run `rnnsweep dynamics --stage` first") from None
    tables[DYNAMICS_CURVES]["id"] = tables[DYNAMICS_CURVES]["id"].fillna("")  # the n-gram rows belong to no run
    draw = figures.by_name(figures.DYNAMICS_FIGURES)[args.figure].drawer()
    draw(read_summary(summary_path(stage)), tables, Path(args.out), args.rank_by)


def cmd_baselines(args: argparse.Namespace) -> None:
    from rnnsweep.baselines import baselines

    write_csv(baselines(Path(args.data), args.eval_bytes, args.history_size, args.max_order), Path(args.out))


def cmd_compare(args: argparse.Namespace) -> None:
    from rnnsweep import plots
    from rnnsweep.baselines import check_same_bytes, read_baselines

    table = read_baselines(Path(args.baselines))
    summaries = _stage_summaries(args.summary)
    for stage, summary in summaries.items():
        check_same_bytes(table, summary, f"the {stage} runs")
    plots.compare(table, summaries, Path(args.out))


def cmd_costs(args: argparse.Namespace) -> None:
    write_csv(costs(read_benchmarks(Path(args.benchmarks))), Path(args.out))


def cmd_headline(args: argparse.Namespace) -> None:
    from rnnsweep.report import headline

    write_csv(headline(_stage_summaries(args.summary), args.rank_by), Path(args.out))


def cmd_findings(args: argparse.Namespace) -> None:
    from rnnsweep import findings
    from rnnsweep.baselines import check_same_bytes, read_baselines
    from rnnsweep.fsutil import atomic_write_text

    summary = findings.read_table(Path(args.summary))
    order1 = None
    if args.baselines:
        table = read_baselines(Path(args.baselines))
        if "data" in summary.columns:
            check_same_bytes(table, summary, f"the runs of {args.summary}")
        order1 = float(table.loc[table["method"] == "order-1 n-gram", "bpb"].iloc[0])
    items = findings.findings(summary, args.loss, args.threshold, order1)
    page = findings.markdown(items, args.summary, len(summary))
    if args.out:
        atomic_write_text(Path(args.out), page)
    else:
        sys.stdout.write(page)


def cmd_dynamics(args: argparse.Namespace) -> None:
    """Every run of a stage measured, tables beside its summary (--stage); or one run's measures printed (--run)."""
    import torch

    if args.run:
        torch.set_num_threads(args.threads)
        _print_run_dynamics(Path(args.run), args)
        return
    from rnnsweep.dynamics_stage import Measures, stage_dynamics

    torch.set_num_threads(1)  # --threads processes, one thread each (rnnsweep.dynamics_stage.measure_runs)
    _require(args, "--stage", ("eval_bytes", *(key.name for key in COMMANDS["dynamics"])))
    settings = Measures(eval_bytes=args.eval_bytes, contexts=tuple(args.contexts) if args.contexts else None,
                        lyapunov_bytes=args.lyapunov_bytes, exponents=args.exponents, max_order=args.max_order,
                        seed=args.seed)
    stage_dir = Path(args.stage)
    data_dir = Path(args.data) if args.data else data_dir_of(stage_dir)
    _write_tables(stage_dynamics(stage_dir, data_dir, settings, workers=args.threads), stage_dir)


def cmd_dynamics_ranked(args: argparse.Namespace) -> None:
    """What of a stage's dynamics depends on rank_by: correlation with the loss, the best runs' attractors."""
    import torch

    from rnnsweep.dynamics_stage import Attractors, ranked_dynamics

    torch.set_num_threads(args.threads)
    settings = Attractors(best=args.best, inputs=tuple(args.attractor_inputs), starts=args.attractor_starts,
                          steps=args.attractor_steps, seed=args.seed)
    stage_dir = Path(args.stage)
    data_dir = Path(args.data) if args.data else data_dir_of(stage_dir)
    _write_tables(ranked_dynamics(stage_dir, data_dir, settings, args.rank_by), stage_dir)


def _require(args: argparse.Namespace, mode: str, keys: Iterable[str]) -> None:
    missing = [option(key) for key in keys if getattr(args, key) is None and key != "contexts"]
    if missing:
        raise config.ConfigError(f"{mode} needs {', '.join(missing)}")


def _write_tables(tables: Mapping[str, object], folder: Path) -> None:
    """Every table computed before the first is written, so a failure writes none."""
    for name, table in tables.items():
        write_csv(table, folder / name)


def _print_run_dynamics(folder: Path, args: argparse.Namespace) -> None:
    import json

    from rnnsweep import dynamics
    from rnnsweep.sample import load_run
    from rnnsweep.data import held_out_windows

    try:
        settings = json.loads((folder / "config.json").read_text())
        history, eval_bytes = int(settings["history_size"]), int(settings["eval_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise data.DataError(f"{folder} is not a finished run's folder ({err})") from None
    model = load_run(folder)
    split = data.load_split(Path(args.data) if args.data else data_dir_of(folder.parent.parent), "valid")
    windows = held_out_windows(split, args.eval_bytes or eval_bytes, history)
    ks = args.contexts or dynamics.context_lengths(history)
    found = dynamics.measure(model, windows, ks, split[:args.lyapunov_bytes or 500], args.exponents or 8, args.seed)
    print(f"{folder.name}: held-out bits per byte when the cell sees only the last k bytes "
          f"({windows.size - len(windows)} bytes of valid)")
    print(f"  {'k':<12}" + " ".join(f"{k:>7}" for k in found.ks))
    for variant in dynamics.VARIANTS:
        print(f"  {variant:<12}" + " ".join(f"{b:7.4f}" for b in found.memory[variant][0]))
    print("sensitivity by lag (mean gradient norm, lag 0 first): " + " ".join(f"{v:.3g}" for v in found.sensitivity[0, :12]))
    for key, value in found.rows()[0].items():
        print(f"  {key:<17} {value:.4g}")


def _stage_summaries(paths: list[str]) -> dict:
    """Stage name (the folder a summary is in) -> its summary table, in the order given."""
    return {Path(path).parent.name: read_summary(Path(path)) for path in paths}


def cmd_table(args: argparse.Namespace) -> None:
    from rnnsweep.tables import TABLES  # statsmodels is slow to import; only tables need it

    options = {"rank_by": args.rank_by} if args.table in RANKED_TABLES else {}
    write_csv(TABLES[args.table](read_summary(Path(args.summary)), **options), Path(args.out))


def cmd_sample(args: argparse.Namespace) -> None:
    from rnnsweep.sample import generate, load_run, reading_of

    folder = Path(args.run)
    vocab, encode_prompt = reading_of(folder, Path(args.data) if args.data else data_dir_of(folder.parent.parent))
    text = generate(load_run(folder), encode_prompt(args.prompt.encode()), args.bytes, args.temperature, args.seed, vocab)
    sys.stdout.buffer.write(args.prompt.encode() + text + b"\n")


def cmd_samples(args: argparse.Namespace) -> None:
    from rnnsweep.fsutil import atomic_write_text
    from rnnsweep.sample import SampleSettings, samples_markdown

    summaries = {Path(path).parent.name: Path(path) for path in args.summary}
    settings = SampleSettings(args.bytes, args.temperature, args.prompt_bytes, args.seed, args.rank_by)
    atomic_write_text(Path(args.out), samples_markdown(summaries, Path(args.data), settings))


Commands = "argparse._SubParsersAction[OneLineParser]"


def _command(sub: Commands, name: str, func: Callable[[argparse.Namespace], None], text: str) -> OneLineParser:
    """A command's parser, with the options of everything it takes from a profile (rnnsweep.options.COMMANDS)."""
    parser = sub.add_parser(name, help=text)
    parser.set_defaults(func=func)
    if name in COMMANDS:
        add_command_options(parser, name)
    return parser


def _data_commands(sub: Commands) -> None:
    p = _command(sub, "data", cmd_data, "download or generate the corpus and split it 90/5/5")
    p.add_argument("--out", required=True, help="folder for the splits and corpus.json")
    p.add_argument("--min-bytes", type=int, default=2, help="fail if a split is shorter (one window)")
    p = _command(sub, "tokenize", cmd_tokenize, "learn a BPE vocabulary from the training split and write each split as token ids")
    p.add_argument("--data", required=True, help="the folder of the splits; the vocabulary and id files are written beside them")
    p = _command(sub, "retokenize", cmd_retokenize, "write a manifest of another manifest's runs reading other tokens")
    p.add_argument("--manifest", required=True, help="the runs to train again (the last stage's manifest)")
    p.add_argument("--out", required=True, help="the manifest to write")
    _reading_options(p)
    p = _command(sub, "baselines", cmd_baselines, "write the bits per byte of n-gram models and compressors on the test slice")
    p.add_argument("--data", required=True, help="folder with the splits: n-grams count the training split")
    p.add_argument("--out", required=True, help="the table to write")


def _manifest_commands(sub: Commands) -> None:
    p = _command(sub, "grid", cmd_grid, "write the stage-1 manifest (runs already listed keep their order)")
    p.add_argument("--out", required=True, help="the manifest to write")
    _manifest_options(p, config.STAGES[:1])
    p = _command(sub, "select", cmd_select, "write the stage-2 or stage-3 manifest from the previous stage's summary")
    p.add_argument("--stage", required=True)
    p.add_argument("--summary", required=True, help="the previous stage's summary.csv")
    p.add_argument("--out", required=True, help="the manifest to write")
    _manifest_options(p, config.STAGES[1:])


def _training_commands(sub: Commands) -> None:
    p = _command(sub, "worker", cmd_worker, "claim and train unfinished runs of a stage until none is left")
    _worker_options(p)
    p.add_argument("--history", help="also append the log records to this file: it keeps every attempt of a job "
                                     "whose log is replaced when the job is retried")
    p = _command(sub, "aggregate", cmd_aggregate, "write a stage's summary and curves tables, training any run without a valid result")
    _worker_options(p)
    p.add_argument("--summary", help="the summary table to write (default: summary.csv beside the manifest)")
    p.add_argument("--curves", help="the curves table to write (default: curves.csv beside the manifest)")
    p = _command(sub, "status", cmd_status, "show each stage's runs, workers, speed, ETA and best runs; reads only")
    p.add_argument("--results", default="results", help="a results folder or one study's folder (default: results)")
    p.add_argument("--watch", action="store_true", help="redraw every --every seconds until Ctrl-C")
    p.add_argument("--every", type=_positive, default=5, help="seconds between redraws with --watch")


def _summaries(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", nargs="+", required=True, help="each stage's summary table, in stage order")


def _analysis_commands(sub: Commands) -> None:
    p = _command(sub, "table", cmd_table, "write an analysis table")
    p.add_argument("table", choices=sorted({name for names in STAGE_TABLES.values() for name in names} | set(SWEEP_TABLES)))
    p.add_argument("--summary", required=True)
    p.add_argument("--out", required=True)
    p = _command(sub, "headline", cmd_headline, "write each stage's run count, diverged runs and best design: the report's front page")
    _summaries(p)
    p.add_argument("--out", required=True)
    p = _command(sub, "costs", cmd_costs, "sum the jobs' benchmark records by rule: where the study's time went")
    p.add_argument("--benchmarks", required=True, help="the folder of the benchmark files, <rule>/<job>.tsv")
    p.add_argument("--out", required=True, help="the table to write")
    p = _command(sub, "findings", cmd_findings, "test the published study's claims on a stage summary: evidence and a verdict each")
    p.add_argument("--summary", required=True, help="any CSV of runs with the design columns and a loss (a stage's summary.csv)")
    p.add_argument("--out", help="the page to write (default: print it)")
    p.add_argument("--loss", default="min_loss", help="the column to judge by (default: min_loss, as published)")
    p.add_argument("--threshold", type=config.option_type("plots", "threshold"), default=1.9,
                   help="the memory threshold, in the loss's unit (default: 1.9 nats, the study's)")
    p.add_argument("--baselines", help="baselines.csv: its order-1 n-gram decides the memory claim")
    p = _command(sub, "tokenizers", cmd_tokenizers, "compare the same runs read as bytes and as BPE tokens: a table and a figure")
    p.add_argument("--summary", nargs=2, required=True, help="the study's last stage's summary, then its runs' under the other tokenizer")
    p.add_argument("--out", required=True, help="the table to write")
    p.add_argument("--figure", required=True, help="the figure to draw")
    p = _command(sub, "corpora", cmd_corpora, "compare the studies of several corpora: rank agreement, switch effects, a figure")
    p.add_argument("--study", nargs=2, action="append", required=True, metavar=("NAME", "FOLDER"),
                   help="a corpus's name and its study's folder (results/<study>/<name>); once per corpus")
    p.add_argument("--out", required=True, help="the rank agreement table to write")
    p.add_argument("--effects", required=True, help="the switch effects table to write")
    p.add_argument("--figure", required=True, help="the figure to draw")


def _figure_commands(sub: Commands) -> None:
    p = _command(sub, "plot", cmd_plot, "render one figure")
    p.add_argument("figure")
    p.add_argument("--summary", required=True)
    p.add_argument("--curves", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--baselines", help="baselines.csv: the swarms draw the best baseline as a line")
    p = _command(sub, "compare", cmd_compare, "draw the baselines beside the best run of each stage")
    p.add_argument("--baselines", required=True, help="baselines.csv")
    _summaries(p)
    p.add_argument("--out", required=True)
    p = _command(sub, "plot-dynamics", cmd_plot_dynamics, "draw one figure of a stage's dynamics from its tables")
    p.add_argument("figure", choices=DYNAMICS_FIGURES)
    p.add_argument("--stage", required=True, help="a stage folder holding its summary and dynamics tables")
    p.add_argument("--out", required=True, help="the PNG to write")


def _sample_commands(sub: Commands) -> None:
    p = _command(sub, "sample", cmd_sample, "print text a trained run generates after a prompt")
    p.add_argument("--run", required=True, help="a finished run's folder (runs/<id>)")
    p.add_argument("--prompt", default="", help="text fed to the run first")
    p.add_argument("--data", help="a BPE run's data folder, with its vocabulary (default: data/ beside the stage folders)")
    add_options(p, keys("bytes", "temperature", block=("samples",)) + keys("seed"))
    p = _command(sub, "samples", cmd_samples, "write a page of text from the best run of each stage")
    _summaries(p)
    p.add_argument("--data", required=True, help="the folder of the splits: the prompt is the start of the test split")
    p.add_argument("--out", required=True)


def _dynamics_commands(sub: Commands) -> None:
    p = _command(sub, "dynamics", cmd_dynamics, "what trained cells do with time: memory, sensitivity, Lyapunov exponents; "
                 "of every run of a stage (tables beside its summary) or of one run (printed)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", help="an aggregated stage's folder: its dynamics tables are written into it")
    which.add_argument("--run", help="a finished run's folder (runs/<id>): its measures are printed")
    p.add_argument("--eval-bytes", type=_positive, help="held-out bytes measured (--run: the run's eval_bytes)")
    _dynamics_common(p)
    p = _command(sub, "dynamics-ranked", cmd_dynamics_ranked, "what of a stage's dynamics depends on rank_by: each measure's "
                 "correlation with the loss, and the best runs' attractors, orbit diagram and trajectory")
    p.add_argument("--stage", required=True, help="a stage folder whose dynamics were measured (rnnsweep dynamics)")
    _dynamics_common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rnnsweep", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for group in (_data_commands, _manifest_commands, _training_commands, _analysis_commands, _figure_commands,
                  _sample_commands, _dynamics_commands):
        group(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
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
