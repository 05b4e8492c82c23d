"""What a run reads: the bytes themselves, or the ids of a byte-pair vocabulary learnt from the training split.

A run of tokenizer `bytes` reads each split as it is: id = byte, 256 ids. A
run of tokenizer `bpe` reads ids of a vocabulary of `vocab_size` pieces, each
piece a byte string: the 256 single bytes, then merges learnt by Hugging
Face `tokenizers` from the training split alone. `rnnsweep tokenize` writes
the vocabulary (data/tokenizer.json), each split encoded once as 16-bit ids
(data/<split>.ids, read by memory map: training never tokenises) and, last,
data/tokens.json, which records the hashes each id file was made from.

Encoding is lossless for any bytes, text or not: each byte becomes the
character of the same number (Latin-1), so the vocabulary's pieces are
byte strings and a split's ids decode to exactly its bytes. Before merges
are counted, the bytes are cut after each newline and into runs of letters,
of digits, of other symbols and of white space (a leading space joins the
run after it), so a piece never spans two words; because a cut falls after
every newline, encoding line by line is encoding the whole split.

`load_text` gives a run what it reads, checked: the id files must be the
ones tokens.json records, made from the splits as they are now with the
tokenizer file as it is now, and every id must be below the vocabulary's
size (the engine's lookup does not check). `Vocabulary.id` names the
tokenizer and id files together; it is part of a BPE run's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnsweep import provenance
from rnnsweep.data import SPLITS, DataError, check_splits, file_sha256, load_split
from rnnsweep.design import BYTE_VOCAB
from rnnsweep.fsutil import atomic_open, atomic_write_json, atomic_write_text
from rnnsweep.grid import Run, vocabulary_problem
from rnnsweep.layout import IDS_SUFFIX, TOKENIZER, TOKENS_META

#: How bytes are cut before merges are counted (see the module's docstring).
PIECES_PATTERN = r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+"
#: A merge must occur at least this often in the training split to be learnt.
MIN_FREQUENCY = 2
IDS_DTYPE = np.dtype("<u2")  # holds every id below grid.MAX_VOCAB


def recipe() -> str:
    """How a vocabulary is made: the cut, the threshold and the library's version. The tokenize rule takes it
    as a parameter, so a change to any of them learns the vocabulary again."""
    from importlib.metadata import version

    return f"{PIECES_PATTERN} min_frequency={MIN_FREQUENCY} tokenizers=={version('tokenizers')}"


@dataclass(frozen=True)
class Vocabulary:
    """The byte string each id stands for; `id` names the tokenizer and the id files (None for bytes); and the
    training split's bytes per token, which scales the EMA's start (rnnsweep.train.EMA_START)."""

    pieces: tuple[bytes, ...]
    id: str | None = None
    bytes_per_token: float = 1.0

    @property
    def size(self) -> int:
        return len(self.pieces)

    @property
    def widths(self) -> np.ndarray:
        """(size,) bytes each id covers: what turns nats per token into bits per byte."""
        return np.array([len(p) for p in self.pieces], dtype=np.int64)

    def decode(self, ids: list[int] | np.ndarray) -> bytes:
        return b"".join(self.pieces[int(i)] for i in ids)


BYTES = Vocabulary(tuple(bytes([b]) for b in range(BYTE_VOCAB)))


@dataclass(frozen=True)
class Text:
    """What runs of one tokenizer read: the three splits as ids, the id of their bytes, and what ids stand for."""

    splits: tuple[np.ndarray, np.ndarray, np.ndarray]  # train, valid, test: uint8 bytes or uint16 ids
    data_id: str  # provenance.data_id of the bytes, whatever the tokenizer
    vocab: Vocabulary

    @classmethod
    def of_bytes(cls, train: np.ndarray, valid: np.ndarray, test: np.ndarray) -> Text:
        """Byte splits in hand, read as bytes: their data id is computed from them."""
        return cls((train, valid, test), provenance.data_id(train, valid, test), BYTES)

    def fingerprint(self, run: Run) -> str:
        return provenance.fingerprint(run, self.data_id, self.vocab.id)


# --------------------------------------------------------------------------- the tokenizer


def _as_text(data: np.ndarray | bytes) -> list[str]:
    """Bytes as Latin-1 lines, each ending after a newline byte: one character per byte, so nothing is lost.

    Only the newline byte ends a line (str.splitlines would also cut at \r, \x85 and others, where
    the pre-tokenizer does not, and encoding by lines would then differ from encoding the whole).
    """
    *lines, last = bytes(data).decode("latin-1").split("\n")
    return [line + "\n" for line in lines] + ([last] if last else [])


def _new_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(PIECES_PATTERN), behavior="isolated"),
    ])
    return tokenizer


def train_bpe(train: np.ndarray | bytes, vocab_size: int):
    """A BPE tokenizer of exactly `vocab_size` pieces learnt from `train`; DataError if it cannot support that many."""
    from tokenizers import trainers

    problem = vocabulary_problem("bpe", vocab_size)
    if problem:
        raise DataError(problem)
    tokenizer = _new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, show_progress=False,
        initial_alphabet=[chr(b) for b in range(BYTE_VOCAB)],
    )
    tokenizer.train_from_iterator(_as_text(train), trainer=trainer)
    learnt = tokenizer.get_vocab_size()
    if learnt < vocab_size:
        raise DataError(
            f"the training split ({len(train):,} bytes) supports a vocabulary of {learnt} pieces (merges seen at least "
            f"{MIN_FREQUENCY} times), not vocab_size {vocab_size}; use a smaller vocab_size or a longer corpus"
        )
    return tokenizer


def pieces_of(tokenizer) -> tuple[bytes, ...]:
    """The byte string of every id, in id order."""
    by_id = sorted((i, piece) for piece, i in tokenizer.get_vocab().items())
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise DataError("the tokenizer's ids are not 0 .. size-1")
    return tuple(piece.encode("latin-1") for _, piece in by_id)


#: Lines encoded at once: bounds the memory the library's encodings take on a large split.
ENCODE_LINES = 1 << 16


def encode(tokenizer, data: np.ndarray | bytes) -> np.ndarray:
    """The ids of `data`, as uint16, line by line (the same as encoding it whole)."""
    lines = _as_text(data)
    parts = [np.zeros(0, dtype=IDS_DTYPE)]
    for first in range(0, len(lines), ENCODE_LINES):
        encodings = tokenizer.encode_batch(lines[first:first + ENCODE_LINES])
        parts.append(np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64).astype(IDS_DTYPE))
    return np.concatenate(parts)


def read_tokenizer(data_dir: Path):
    """The tokenizer saved in a data folder."""
    from tokenizers import Tokenizer

    path = Path(data_dir) / TOKENIZER
    try:
        return Tokenizer.from_str(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; run the tokenize step (`rnnsweep tokenize`) first") from None
    except Exception as err:  # the library raises its own exception types for a malformed file
        raise DataError(f"{path} is not a tokenizer file ({err})") from None


# --------------------------------------------------------------------------- files


def ids_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}{IDS_SUFFIX}"


def prepare_tokens(data_dir: Path, vocab_size: int) -> dict:
    """Learn the vocabulary from data_dir's training split, encode the three splits, write the files; return tokens.json.

    Nothing is written until the vocabulary is learnt, so a vocabulary the
    split cannot support leaves the folder as it was. tokens.json is removed
    before the other files are replaced and written last.
    """
    data_dir = Path(data_dir)
    splits = {split: load_split(data_dir, split) for split in SPLITS}
    tokenizer = train_bpe(splits["train"], vocab_size)
    vocab = pieces_of(tokenizer)
    meta_path = data_dir / TOKENS_META
    meta_path.unlink(missing_ok=True)
    atomic_write_text(data_dir / TOKENIZER, tokenizer.to_str(pretty=True))
    meta: dict = {"vocab_size": len(vocab), "tokenizer_sha256": file_sha256(data_dir / TOKENIZER), "splits": {}}
    for split, data in splits.items():
        ids = encode(tokenizer, data)
        with atomic_open(ids_path(data_dir, split), "wb") as handle:
            handle.write(ids.tobytes())
        meta["splits"][split] = {
            "bytes": len(data), "tokens": len(ids), "bytes_sha256": provenance.split_sha256(data),
            "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
        }
    atomic_write_json(meta_path, meta)
    return meta


#: What tokens.json records of each split, and the types it must have.
_SPLIT_RECORD = {"bytes": int, "tokens": int, "bytes_sha256": str, "ids_sha256": str}


def _read_meta(data_dir: Path) -> dict:
    path = Path(data_dir) / TOKENS_META
    try:
        meta = json.loads(path.read_text())
        splits = {split: {key: meta["splits"][split][key] for key in _SPLIT_RECORD} for split in SPLITS}
        wrong = [f"{split}.{key}" for split, record in splits.items() for key, kind in _SPLIT_RECORD.items()
                 if type(record[key]) is not kind]
        if wrong:
            raise TypeError(f"{', '.join(wrong)} of the wrong type")
        return {"vocab_size": int(meta["vocab_size"]), "tokenizer_sha256": str(meta["tokenizer_sha256"]), "splits": splits}
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; run the tokenize step (`rnnsweep tokenize`) first") from None
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is damaged ({err!r}); run the tokenize step again") from None


def _bpe_ids(data_dir: Path, split: str, record: dict, size: int) -> np.ndarray:
    """A split's ids by memory map, checked against what tokens.json says they are."""
    path = ids_path(data_dir, split)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the tokenize step again")
    if path.stat().st_size != record["tokens"] * IDS_DTYPE.itemsize:
        raise DataError(f"{path} holds {path.stat().st_size} bytes, not {record['tokens']} ids; run the tokenize step again")
    if file_sha256(path) != record["ids_sha256"]:
        raise DataError(f"{path} is not the id file tokens.json records; run the tokenize step again")
    ids = np.memmap(path, dtype=IDS_DTYPE, mode="r") if record["tokens"] else np.zeros(0, IDS_DTYPE)
    top = int(ids.max(initial=0))
    if top >= size:
        raise DataError(f"{path} holds id {top}, out of range for a vocabulary of {size}; run the tokenize step again")
    return ids


def load_text(data_dir: Path, tokenizer: str = "bytes", vocab_size: int = BYTE_VOCAB) -> Text:
    """What runs of `tokenizer` and `vocab_size` read from a data folder, after checking it belongs to its splits."""
    problem = vocabulary_problem(tokenizer, vocab_size)
    if problem:
        raise DataError(problem)
    data_dir = Path(data_dir)
    raw = tuple(load_split(data_dir, split) for split in SPLITS)
    shas = {split: provenance.split_sha256(data) for split, data in zip(SPLITS, raw)}
    check_splits(data_dir, shas)
    data_id = provenance.digest_of(shas)
    if tokenizer == "bytes":
        return Text(raw, data_id, BYTES)  # type: ignore[arg-type]
    meta = _read_meta(data_dir)
    tokenizer_sha = file_sha256(data_dir / TOKENIZER) if (data_dir / TOKENIZER).is_file() else None
    if tokenizer_sha != meta["tokenizer_sha256"]:
        raise DataError(f"{data_dir / TOKENIZER} is missing or not the tokenizer the id files were made with; "
                        "run the tokenize step again")
    for split in SPLITS:
        if meta["splits"][split]["bytes_sha256"] != shas[split]:
            raise DataError(f"the token ids of {split} in {data_dir} were made from other bytes than the split; "
                            "run the tokenize step again")
    pieces = pieces_of(read_tokenizer(data_dir))
    if len(pieces) != meta["vocab_size"] or len(pieces) != vocab_size:
        raise DataError(f"the tokenizer in {data_dir} has {len(pieces)} pieces, but the runs ask for vocab_size "
                        f"{vocab_size}; run the tokenize step and write the manifests again")
    ids = tuple(_bpe_ids(data_dir, split, meta["splits"][split], len(pieces)) for split in SPLITS)
    files = {"tokenizer": tokenizer_sha, **{split: meta["splits"][split]["ids_sha256"] for split in SPLITS}}
    # From the split and its checked ids, not from tokens.json's counts, which no hash covers.
    vocab = Vocabulary(pieces, provenance.digest_of(files), len(raw[0]) / max(len(ids[0]), 1))
    return Text(ids, data_id, vocab)  # type: ignore[arg-type]


def texts_for(runs: list[Run], data_dir: Path, loaded: dict[tuple[str, int], Text] | None = None) -> dict[tuple[str, int], Text]:
    """What each tokenizer and vocabulary size among `runs` reads, loaded once each (not again if in `loaded`,
    which this fills: readers of several stages share it); every split must hold one window of each run (the
    corpus step checks that in bytes, which BPE shortens)."""
    texts = {} if loaded is None else loaded
    for key in dict.fromkeys((run.tokenizer, run.vocab_size) for run in runs):
        if key not in texts:
            texts[key] = load_text(data_dir, *key)
    for run in runs:
        for split, ids in zip(SPLITS, text_of(texts, run).splits):
            if len(ids) < run.settings.history_size:
                raise DataError(
                    f"the {split} split in {data_dir} holds {len(ids):,} {run.tokenizer} tokens, fewer than one window "
                    f"of {run.settings.history_size}; use a smaller history_size or a longer corpus"
                )
    return texts


def text_of(texts: dict[tuple[str, int], Text], run: Run) -> Text:
    return texts[run.tokenizer, run.vocab_size]


def fingerprints(runs: list[Run], texts: dict[tuple[str, int], Text]) -> dict[str, str]:
    """Run id -> the fingerprint its result must carry, given what its runs read (`texts_for`)."""
    return {run.id: text_of(texts, run).fingerprint(run) for run in runs}

