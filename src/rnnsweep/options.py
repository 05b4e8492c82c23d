"""The profile keys each command takes: one table, read in both directions.

A Snakemake rule turns the profile into a command's arguments
(`profile_args`); the command's parser makes its options from the same keys
(`add_options`), typed, ranged, described and defaulted by the profile schema.
So a key is spelled once, in the schema; its option is `--` and its name with
dashes (`threads_per_worker` is `--threads-per-worker`); and a rule and the
command it calls cannot disagree. Only the schema is read here: importing this
loads neither torch nor pandas.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rnnsweep import config
from rnnsweep.config import STAGES


@dataclass(frozen=True)
class Key:
    """A profile key that a command takes: where it sits in a profile, and whether the command needs it."""

    path: tuple[str, ...]  # ("plots", "threshold"): the profile's plots block, its threshold
    required: bool = True  # a key the profile may leave null, or the schema gives a default, is never required
    sweep: bool = False  # a stage's axis (several values) reaches the command whole; elsewhere its first value

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def option(self) -> str:
        return option(self.name)


def option(name: str) -> str:
    """The command-line option of a profile key."""
    return "--" + name.replace("_", "-")


def keys(*names: str, block: tuple[str, ...] = (), required: bool = True, sweep: bool = False) -> tuple[Key, ...]:
    """Keys of one block of a profile (the top level unless `block` names one)."""
    return tuple(Key((*block, name), required, sweep) for name in names)


#: What ranks runs: selection, the headline, the group table, figures and samples take it.
RANK = keys("rank_by")
#: How runs are trained, by `worker` and by `aggregate` (for runs it finds without a valid result); and their
#: threads, which a rule passes as the `threads` Snakemake grants (fewer than the profile's under a small --cores).
TRAINING = keys("device", "lock") + keys("lock_lease_s", required=False) + keys("checkpoint_every")  # a lease: soft locks only
THREADS = keys("threads_per_worker")
#: What every figure takes; the figures that rank runs take RANK too.
PLOTS = keys("threshold", "best_curves", "smooth", block=("plots",))

#: What each command takes from a profile beside its files; `grid` and `select` take `manifest_keys(stage)`.
COMMANDS: dict[str, tuple[Key, ...]] = {
    "data": keys("corpus", "cache_dir") + keys("enwik8_url", "enwik8_sha256", "generated_bytes", "seed", required=False),
    "tokenize": keys("vocab_size"),
    "worker": TRAINING + THREADS,
    "aggregate": TRAINING + THREADS,
    "plot": PLOTS + RANK,
    # The n-grams are scored on the test slice the first stage's runs are scored on.
    "baselines": keys("max_order", block=("baselines",)) + keys("eval_bytes", "history_size", block=(STAGES[0],)),
    "samples": keys("bytes", "temperature", "prompt_bytes", block=("samples",)) + keys("seed") + RANK,
    # Optional: `dynamics --run` measures one run with its own settings where these are not given.
    "dynamics": keys("contexts", "lyapunov_bytes", "exponents", block=("dynamics",), required=False)
    + keys("max_order", block=("baselines",), required=False),
    "dynamics-ranked": keys("best", "attractor_inputs", "attractor_starts", "attractor_steps", block=("dynamics",)) + RANK,
    "plot-dynamics": RANK,
    "headline": RANK,
    "table": RANK,
    "corpora": RANK,
}


def manifest_keys(stage: str) -> tuple[Key, ...]:
    """What a stage's manifest is made from: its block's design keys and training settings, what every row
    depends on beside them, and for a later stage what ranks the runs it selects from.

    A later stage's design keys are not required of `select`, which takes both
    later stages' and checks those of the stage it builds.
    """
    first = stage == STAGES[0]
    design = keys(*config.design_keys(stage), block=(stage,), required=first)
    settings = keys(*config.training_keys(), block=(stage,), sweep=True)
    return design + settings + keys("max_stage_runs") + keys("precision", "batch_designs", "device", "seed") + (() if first else RANK)


def _left_out(profile: Mapping, path: tuple[str, ...]) -> bool:
    """Whether the profile leaves out the key at `path`, as it may where the schema gives the key a default."""
    for part in path:
        if not isinstance(profile, Mapping) or part not in profile:
            return "default" in config.node(path)
        profile = profile[part]
    return False


def _value(profile: Mapping, path: tuple[str, ...]) -> object:
    """The profile's value of the key at `path`; the schema's default where the profile leaves the key out."""
    if _left_out(profile, path):
        return config.default(*path)
    for part in path:
        profile = profile[part]
    return profile


def profile_args(profile: Mapping, wanted: Iterable[Key]) -> list[str]:
    """The arguments that pass `wanted` keys of a profile to a command (a list gives several values, null none;
    of an axis, a command that takes one value is given the first, the stage block's own).

    A key the profile leaves out is not passed: the command's option has the schema's default, and a rule's
    arguments stay what they were before the key existed (Snakemake reruns a job whose params changed).
    """
    argv: list[str] = []
    for key in wanted:
        if _left_out(profile, key.path):
            continue
        value = _value(profile, key.path)
        if isinstance(value, list) and not key.sweep and "array" not in config.types(key.path):
            value = value[0]
        if value is not None:
            argv += [key.option, *map(str, value if isinstance(value, list) else [value])]
    return argv


def command_args(profile: Mapping, command: str) -> list[str]:
    """`profile_args` of everything `command` takes from a profile."""
    return profile_args(profile, COMMANDS[command])


def reading_args(profile: Mapping, tokenizer: str) -> list[str]:
    """The arguments that make runs read `tokenizer`: its name, and for BPE the profile's vocabulary size.

    A byte study is not passed the vocabulary size, so editing it changes no byte study's manifests.
    """
    vocab = profile_args(profile, keys("vocab_size")) if tokenizer == "bpe" else []
    return [option("tokenizer"), tokenizer, *vocab]


def manifest_args(profile: Mapping, stage: str) -> list[str]:
    """What `grid` (stage 1) or `select` (stages 2, 3) needs from a profile besides its files."""
    return profile_args(profile, manifest_keys(stage)) + reading_args(profile, profile["tokenizer"])


def shell_words(argv: Iterable[str]) -> str:
    """Arguments as one shell-quoted string, for a Snakemake rule's command."""
    return " ".join(map(shlex.quote, argv))


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, wanted: Iterable[Key]) -> None:
    """The keys as options, each typed, ranged, described and defaulted by its schema node; a list key takes
    several values. A key given twice (two stages' shared settings) is added once."""
    added: set[str] = set()
    for key in wanted:
        if key.name in added:
            continue
        added.add(key.name)
        node = config.node(key.path)
        item = config.item_type(*key.path)
        several = item or (key.sweep and node.get("axis"))
        default = node.get("default")
        parser.add_argument(
            key.option, type=item or config.option_type(*key.path), nargs="+" if several else None,
            choices=node.get("enum"), default=default, help=config.description(*key.path),
            required=key.required and default is None and not config.nullable(key.path),
        )


def add_command_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Everything `command` takes from a profile, as options."""
    add_options(parser, COMMANDS[command])
