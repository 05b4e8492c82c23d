"""The stage-1 grid of designs, runs, and the per-stage manifest of runs.

A *design* (rnnsweep.design) is the seven switches plus depth and width. A
*run* is a design trained once with given settings and a replicate number.
Ids are hashes of the canonical design, so they survive reordering of the
grid, re-generation and hand-edits of unrelated rows. Where a stage sweeps a
setting (an axis: several values in its block), a run's id adds each setting
where it differs from the block's own (first) value, as `@lr=0.003`: a stage
without axes has the ids it always had, and adding a value to an axis keeps
every existing run's id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

from rnnsweep import config
from rnnsweep.design import BYTE_VOCAB, SWITCHES, Design
from rnnsweep.fsutil import atomic_write_text

#: The arithmetic of a training step; `precision` is a manifest column beside the settings.
PRECISIONS: tuple[str, ...] = config.choices("precision")
#: How a run is trained, the manifest's `engine` column: `design` builds the model of its design alone
#: (replicates of that design batched with it); `superset` trains it in a batched model of every part,
#: beside other designs of its shape, its own parts switched on by masks (rnnsweep.model).
ENGINE_PATHS: tuple[str, ...] = ("design", "superset")
#: How a manifest picks each design's path (`batch_designs`): by the cost model (rnnsweep.policy), or always `design`.
BATCH_DESIGNS: tuple[str, ...] = config.choices("batch_designs")
#: What a run reads, the manifest's `tokenizer` column: `bytes` (ids are the bytes, 256 of them) or `bpe`
#: (ids of a byte-pair vocabulary of `vocab_size` learnt from the training split, rnnsweep.tokens).
TOKENIZERS: tuple[str, ...] = config.choices("tokenizer")
#: The largest vocabulary: token ids are stored as 16-bit integers.
MAX_VOCAB = 1 << 16
#: A run id: the design id, `@key=value` for each setting that differs from its stage block's, then
#: `-r<replicate>` for replicates after the first. Nothing else is ever a path component under a stage folder.
RUN_ID = re.compile(r"[0-9a-f]{10}(@[a-z_]+=[A-Za-z0-9.+]+(-[0-9]+)?)*(-r[1-9][0-9]*)?")
#: One `@key=value` of a run id.
TAG = re.compile(r"@([a-z_]+)=([A-Za-z0-9.+]+(?:-[0-9]+)?)")


class ManifestError(ValueError):
    """A manifest that cannot be trusted; the message names the file and the problem."""


class Settings(Mapping[str, object]):
    """A run's training settings, named and typed as the profile schema's `$defs.training`; `settings.lr` reads one.

    The schema is the list: a key added there reaches every manifest row,
    summary and fingerprint without a line here. Immutable and hashable, so
    runs with equal settings can share a batch.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, object]) -> None:
        object.__setattr__(self, "_values", dict(values))

    @classmethod
    def of(cls, values: Mapping[str, object]) -> "Settings":
        """The training settings among `values`, in schema order; one the schema gives a default may be absent."""
        defaults = config.training_defaults()
        try:
            return cls({key: values[key] if key in values else defaults[key] for key in config.training_keys()})
        except KeyError as err:
            raise KeyError(f"training setting {err.args[0]} is missing") from None

    def __getitem__(self, key: str) -> object:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __getattr__(self, key: str) -> object:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no training setting {key!r}") from None

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("a run's settings do not change; make new ones with replace()")

    def __reduce__(self) -> tuple:
        return Settings, (self._values,)

    def __repr__(self) -> str:
        return f"Settings({self._values!r})"

    def replace(self, **changes: object) -> "Settings":
        return Settings({**self._values, **changes})


@dataclass(frozen=True)
class Run:
    """One manifest row: a design, its replicate and seed, and its training settings."""

    id: str
    config_id: str
    design: Design
    replicate: int
    seed: int
    settings: Settings
    precision: str = "fp32"
    engine: str = "design"
    tokenizer: str = "bytes"
    vocab_size: int = BYTE_VOCAB

    def row(self) -> dict[str, object]:
        design = asdict(self.design)
        head = {"id": self.id, "config_id": self.config_id}
        tail = {k: getattr(self, k) for k in ("precision", "engine", *READING)}
        return {**head, **design, "replicate": self.replicate, "seed": self.seed, **self.settings, **tail}

    @property
    def shape(self) -> tuple[int, int]:
        """(n_layers, state_size): designs of one shape can share a superset model."""
        return self.design.n_layers, self.design.state_size

    @property
    def batch_key(self) -> tuple:
        """Runs with equal keys can train as one batched model: the same settings, path and tokens, and one
        design (stage 3's seeds) on the design path, or one shape on the superset path."""
        model = self.design if self.engine == "design" else self.shape
        return (self.engine, model, self.settings, self.precision, self.tokenizer, self.vocab_size)


DESIGN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Design))
#: The manifest columns that say what a run reads; a manifest without them reads bytes.
READING: tuple[str, ...] = ("tokenizer", "vocab_size")
#: Columns a manifest written before them may lack, and the values such a manifest means (with any training
#: setting the schema gives a default, `optional_columns()`).
OPTIONAL_COLUMNS: dict[str, str] = {"engine": "design", "tokenizer": "bytes", "vocab_size": str(BYTE_VOCAB)}


def columns() -> tuple[str, ...]:
    """A manifest's columns: the run, its design, its training settings (the schema's), how it is trained and read."""
    return ("id", "config_id", *DESIGN_FIELDS, "replicate", "seed", *config.training_keys(), "precision", "engine", *READING)


def optional_columns() -> dict[str, str]:
    """The columns a manifest may lack, and the value each means when absent."""
    return {**OPTIONAL_COLUMNS, **{key: str(value) for key, value in config.training_defaults().items()}}


def stage1_designs(n_layers: Iterable[int], state_sizes: Iterable[int]) -> list[Design]:
    """Every sensible design of docs/study.md §4, in a fixed order.

    Widths below the largest listed are kept only with the residual path on,
    since a narrow cell without it cannot carry the byte identity forward.
    """
    sizes = sorted(set(state_sizes))
    widest = sizes[-1]
    designs = []
    for layers, size in itertools.product(sorted(set(n_layers)), sizes):
        for bits in itertools.product((False, True), repeat=len(SWITCHES)):
            switches = dict(zip(SWITCHES, bits))
            if not (switches["use_new_state"] or switches["use_old_state"]):
                continue
            if size < widest and not switches["use_residual"]:
                continue
            designs.append(Design(**switches, n_layers=layers, state_size=size))
    return designs


def run_seed(config_id: str, replicate: int, base_seed: int) -> int:
    """A 31-bit seed derived from the design and replicate, so a run reproduces alone."""
    digest = hashlib.sha256(f"{base_seed}:{config_id}:{replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def run_id(config_id: str, replicate: int) -> str:
    """Replicate 0 keeps the bare configuration id (its design id, and its settings where a stage sweeps them)."""
    return config_id if replicate == 0 else f"{config_id}-r{replicate}"


def settings_tag(settings: Mapping[str, object], reference: Mapping[str, object]) -> str:
    """`@key=value` for each training setting where `settings` differ from the stage block's own values."""
    differ = [key for key in config.training_keys() if settings[key] != reference[key]]
    return "".join(f"@{key}={config.setting_value(key, str(settings[key]))}" for key in differ)  # as a manifest reads it


#: A design with the settings it keeps from the stage it was selected in (stages 2 and 3 carry axes forward).
Unit = tuple[Design, Mapping[str, object]]
#: How a design is trained at given settings: its engine path (rnnsweep.policy.engine_paths).
EnginePick = Callable[[Design, Settings], str]


def make_runs(
    designs: Iterable[Design | Unit], settings: Mapping, replicates: int = 1, base_seed: int = 0, engine: EnginePick | None = None
) -> list[Run]:
    """Runs for each design × combination of the stage's axes × replicate, the first combination first.

    `settings` is a stage block (a list of several values is an axis, rnnsweep.config.points) with
    `precision` (fp32 unless given) and `tokenizer` with its `vocab_size` (bytes unless given). A unit's
    own settings replace the block's, except those the block sweeps itself. `engine` picks each run's
    path, `design` unless given. A design's seed does not depend on its settings, so the runs of one
    design at each value of an axis start from the same weights and read the same batches.
    """
    precision = settings.get("precision") or "fp32"
    tokenizer = settings.get("tokenizer") or "bytes"
    reading = {"tokenizer": tokenizer, "vocab_size": BYTE_VOCAB if tokenizer == "bytes" else settings["vocab_size"]}
    points, swept = config.points(settings), config.axes(settings)
    reference = Settings.of(points[0])
    runs: dict[str, Run] = {}
    for point in points:
        for unit in designs:
            design, kept = unit if isinstance(unit, tuple) else (unit, {})
            picked = Settings.of({**point, **{k: v for k, v in kept.items() if k not in swept}})
            config_id = design.id + settings_tag(picked, reference)
            path = engine(design, picked) if engine else "design"
            for rep in range(replicates):
                run = Run(run_id(config_id, rep), config_id, design, rep, run_seed(design.id, rep, base_seed), picked,
                          precision=precision, engine=path, **reading)
                runs.setdefault(run.id, run)
    return list(runs.values())


def _parse_row(row: dict[str, str], where: str) -> Run:
    try:
        design = Design.from_mapping(row)
        row = {**optional_columns(), **row}
        settings = Settings({key: config.setting_value(key, row[key]) for key in config.training_keys()})
        ints = {k: int(row[k]) for k in ("replicate", "seed", "vocab_size")}
        run = Run(
            id=row["id"], config_id=row["config_id"], design=design, settings=settings, precision=row["precision"],
            engine=row["engine"], tokenizer=row["tokenizer"], **ints,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"{where}: {err}") from None
    problem = _config_id_problem(run)
    if problem:
        raise ManifestError(f"{where}: {problem}")
    if not RUN_ID.fullmatch(run.id) or run.id != run_id(run.config_id, run.replicate):
        raise ManifestError(f"{where}: id {run.id!r} is not {run_id(run.config_id, run.replicate)}, the id of its design and replicate")
    if run.precision not in PRECISIONS:
        raise ManifestError(f"{where}: precision {run.precision!r} is not one of {', '.join(PRECISIONS)}")
    if run.engine not in ENGINE_PATHS:
        raise ManifestError(f"{where}: engine {run.engine!r} is not one of {', '.join(ENGINE_PATHS)}")
    problem = vocabulary_problem(run.tokenizer, run.vocab_size)
    if problem:
        raise ManifestError(f"{where}: {problem}")
    return run


def _config_id_problem(run: Run) -> str | None:
    """What is wrong with a row's config_id, or None: it is its design's id, then settings the row has."""
    design_id, _, tags = run.config_id.partition("@")
    if design_id != run.design.id:
        return f"config_id {run.config_id} does not match its design (expected {run.design.id})"
    named = TAG.findall("@" + tags) if tags else []
    if "".join(f"@{key}={value}" for key, value in named) != ("@" + tags if tags else ""):
        return f"config_id {run.config_id} is not a design id followed by @setting=value parts"
    for key, value in named:
        if key not in run.settings or str(run.settings[key]) != value:
            return f"config_id {run.config_id} names {key}={value}, but the row has {key} {run.settings.get(key)}"
    return None


def vocabulary_problem(tokenizer: str, vocab_size: int) -> str | None:
    """What is wrong with a tokenizer and vocabulary size, or None: bytes have 256 ids, a BPE vocabulary
    the 256 bytes and at least one merge, and at most MAX_VOCAB ids."""
    if tokenizer not in TOKENIZERS:
        return f"tokenizer {tokenizer!r} is not one of {', '.join(TOKENIZERS)}"
    if tokenizer == "bytes" and vocab_size != BYTE_VOCAB:
        return f"tokenizer bytes has vocab_size {BYTE_VOCAB}, not {vocab_size}"
    if tokenizer == "bpe" and not BYTE_VOCAB < vocab_size <= MAX_VOCAB:
        return f"tokenizer bpe needs vocab_size above {BYTE_VOCAB} (the bytes) and at most {MAX_VOCAB}, not {vocab_size}"
    return None


def read_manifest(path: Path) -> list[Run]:
    """Parse and check a manifest; any hand-edit that breaks it is named, not guessed at."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not a text CSV file ({err})") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        return _parse_rows(reader, path)
    except csv.Error as err:
        raise ManifestError(f"{path} line {reader.line_num}: not a valid CSV file ({err})") from None


def _parse_rows(reader: csv.DictReader, path: Path) -> list[Run]:
    missing = [c for c in columns() if c not in (reader.fieldnames or []) and c not in optional_columns()]
    if missing:
        raise ManifestError(f"{path}: not a manifest, missing columns {', '.join(missing)}")
    runs, seen = [], set()
    for row in reader:
        where = f"{path} line {reader.line_num}"
        if None in row:
            raise ManifestError(f"{where}: more fields than the header")
        run = _parse_row(row, where)
        if run.id in seen:
            raise ManifestError(f"{where}: duplicate id {run.id}")
        seen.add(run.id)
        runs.append(run)
    return runs


def _listed_ids(path: Path) -> list[str]:
    """The run ids a manifest lists, in order; none if there is no readable manifest with an id column."""
    try:
        rows = csv.DictReader(io.StringIO(path.read_text()))
        return [row["id"] for row in rows if row.get("id")] if "id" in (rows.fieldnames or []) else []
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def write_manifest(path: Path, runs: list[Run]) -> list[Run]:
    """Write exactly `runs`, those already listed in their old order first; return the manifest as written.

    The order is kept so that workers' slices and a user's reading stay put
    when a profile grows. A run whose settings changed takes its new row (its
    old result no longer fits its fingerprint and is set aside); a run no
    longer asked for leaves the manifest, its files stay where they are.
    Only the old manifest's ids are read, so one written with other columns
    (an earlier format, or a hand-edit) is replaced by a valid one.
    """
    path = Path(path)
    new = {run.id: run for run in runs}
    merged = [new.pop(run_id) for run_id in _listed_ids(path) if run_id in new] + list(new.values())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(), lineterminator="\n")
    writer.writeheader()
    writer.writerows(run.row() for run in merged)
    atomic_write_text(path, buf.getvalue())
    return merged
