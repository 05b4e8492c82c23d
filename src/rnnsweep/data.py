"""Byte corpora for the sweep: fetch enwik8, make a synthetic corpus, split and load.

Everything works on raw bytes (numpy uint8), never on decoded text, because the
models are byte-level and enwik8 is not valid UTF-8 everywhere.  Every file is
written atomically (temp file in the same directory, then ``os.replace``) so an
interrupted job never leaves a half-written file under its final name, which
Snakemake would otherwise take for a finished output.
"""

from __future__ import annotations

import hashlib
import json
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from filelock import FileLock

from rnnsweep.fsutil import atomic_open, atomic_write_json
from rnnsweep.layout import CORPUS_META

ENWIK8_BYTES = 10**8
SPLITS = ("train", "valid", "test")
#: Corpora named rather than given as a file: downloaded (enwik8) or made here (generated, for tests).
NAMED_CORPORA = ("enwik8", "generated")

_CHUNK = 1 << 20
_LOG_EVERY = 10 * _CHUNK
_NETWORK_ERRORS = (
    urllib.error.URLError,  # includes HTTPError
    http.client.HTTPException,  # e.g. IncompleteRead mid-stream
    ConnectionError,
    TimeoutError,
    ValueError,  # malformed URL
)
_ZIP_ERRORS = (zipfile.BadZipFile, KeyError, EOFError, zlib.error, NotImplementedError)

log = logging.getLogger(__name__)


class DataError(Exception):
    """A corpus problem the user must fix; the message names the file and says what to do."""


# --------------------------------------------------------------------------- which corpora


def corpus_name(entry: str) -> str:
    """What a corpus is called in a study of several: a named corpus by its name, a file by its stem.

    The name is a folder under the study's and a prefix of the workflow's rule
    names, so every character but a letter, digit or underscore becomes `_`.
    """
    if entry in NAMED_CORPORA:
        return entry
    stem = re.sub(r"\W", "_", Path(entry).stem, flags=re.ASCII)
    return stem if stem[:1].isalpha() else f"c_{stem}"


def corpora(corpus: str | list[str]) -> dict[str, str]:
    """Name -> entry for a profile's `corpus` (one entry or a list), refusing an entry that is neither
    named nor a file, and two that would share a name (and so a folder)."""
    named: dict[str, str] = {}
    for entry in [corpus] if isinstance(corpus, str) else corpus:
        if entry not in NAMED_CORPORA and not Path(entry).expanduser().is_file():
            choices = " or ".join(map(repr, NAMED_CORPORA))
            raise DataError(f"corpus: {entry} is not a file; give {choices} or the path of a byte file")
        name = corpus_name(entry)
        if name in named:
            raise DataError(f"corpus: {named[name]} and {entry} would both be called {name!r}; rename one of them")
        named[name] = entry
    return named


# --------------------------------------------------------------------------- files


def _set_aside(path: Path, name: str) -> Path:
    """Rename a bad file to ``<name>.bad-<unique>`` so it is kept for inspection but never reused."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bad = path.with_name(f"{name}.bad-{stamp}-{uuid.uuid4().hex[:8]}")
    os.replace(path, bad)
    return bad


def _copy_stream(src: BinaryIO, dst: BinaryIO, what: str) -> int:
    """Copy in chunks (enwik8 is 100 MB), logging progress about every 10 MB."""
    done, next_log = 0, _LOG_EVERY
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        done += len(chunk)
        if done >= next_log:
            log.info("%s: %d MB", what, done >> 20)
            next_log += _LOG_EVERY
    return done


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _enwik8_problem(path: Path, expected_bytes: int, sha256: str | None) -> str | None:
    """Say what is wrong with a candidate enwik8 file, or None if it is good."""
    size = path.stat().st_size
    if size != expected_bytes:
        return f"has {size:,} bytes instead of {expected_bytes:,}"
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256.lower():
            return f"has sha256 {digest} instead of {sha256.lower()}"
    return None


# --------------------------------------------------------------------------- enwik8


def _by_hand(url: str, cache_dir: Path) -> str:
    return f"download enwik8.zip from {url} and put it (or the unzipped enwik8) in {cache_dir}"


def _download(url: str, archive: Path, timeout: float) -> None:
    """Stream url to ``<archive>.part`` and rename it into place only once complete."""
    part = archive.with_name(archive.name + ".part")
    log.info("downloading %s to %s", url, archive)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as dst:
            _copy_stream(response, dst, f"downloading {url}")
    except _NETWORK_ERRORS as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"downloading {url} failed ({exc}); {_by_hand(url, archive.parent)}") from exc
    except BaseException:  # a full disk, an interrupt: no half download is left behind
        part.unlink(missing_ok=True)
        raise
    os.replace(part, archive)


def _extract(archive: Path, target: Path, url: str, expected_bytes: int, sha256: str | None) -> None:
    """Unzip the member ``enwik8`` next to the archive, checking it before it gets its final name.

    A bad result also sets the archive aside: it is where the bad bytes came
    from, and keeping it would make every rerun fail the same way.
    """
    part = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(archive) as zf, zf.open("enwik8") as src, part.open("wb") as dst:
            _copy_stream(src, dst, f"unzipping {archive}")
    except BaseException as exc:
        part.unlink(missing_ok=True)
        if not isinstance(exc, _ZIP_ERRORS):
            raise  # a full disk, an interrupt: the archive is fine, only the half-written part goes
        bad = _set_aside(archive, archive.name)
        raise DataError(
            f"{archive} is not a zip holding a member 'enwik8' ({exc!r}); moved it to {bad}. "
            f"Rerun to download it again, or {_by_hand(url, archive.parent)}"
        ) from exc
    problem = _enwik8_problem(part, expected_bytes, sha256)
    if problem is not None:
        bad = _set_aside(part, target.name)
        bad_zip = _set_aside(archive, archive.name)
        raise DataError(
            f"enwik8 unzipped from {archive} {problem}; moved it to {bad} and the zip to {bad_zip}. "
            f"Rerun to download it again, or {_by_hand(url, archive.parent)}"
        )
    os.replace(part, target)


def fetch_enwik8(
    cache_dir: Path,
    url: str,
    sha256: str | None = None,
    timeout: float = 60.0,
    *,
    expected_bytes: int = ENWIK8_BYTES,
) -> Path:
    """Return the path of the raw enwik8 file (exactly 10**8 bytes) in cache_dir, downloading enwik8.zip from url if needed.

    A verified ``enwik8`` or a ``enwik8.zip`` already in the cache is used
    without touching the network, so offline clusters work once the file is
    placed by hand.  ``expected_bytes`` exists so tests can serve a tiny file.
    A lock serialises concurrent jobs sharing the cache, which would otherwise
    clobber each other's ``.part`` files.
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / "enwik8"
    archive = cache_dir / "enwik8.zip"
    with FileLock(str(cache_dir / "enwik8.lock")):
        if target.exists():
            problem = _enwik8_problem(target, expected_bytes, sha256)
            if problem is not None:
                bad = _set_aside(target, target.name)
                raise DataError(
                    f"{target} {problem}; moved it to {bad}. "
                    f"Rerun to download it again, or {_by_hand(url, cache_dir)}"
                )
            return target
        if not archive.exists():
            _download(url, archive, timeout)
        _extract(archive, target, url, expected_bytes, sha256)
    log.info("enwik8 ready at %s", target)
    return target


# --------------------------------------------------------------------------- synthetic corpus

_ONSETS = (b"b", b"d", b"f", b"g", b"h", b"k", b"l", b"m", b"n", b"p", b"r", b"s", b"t",
           b"v", b"w", b"z", b"ch", b"sh", b"th", b"st", b"tr", b"pl")
_VOWELS = (b"a", b"e", b"i", b"o", b"u", b"a", b"e", b"ea", b"ou")
_CODAS = (b"", b"", b"", b"", b"n", b"r", b"s", b"t", b"nd", b"ng", b"ck")
_SUFFIXES = (b"", b"", b"", b"", b"s", b"ed", b"ing", b"er")
# Separator after a word: mid-sentence, then sentence ends (space or newline after).
_SEPARATORS = (b" ", b", ", b". ", b"? ", b"! ", b".\n", b"?\n", b"!\n")
_VOCAB_SIZE = 2000
_NAMES = slice(40, 70)  # ranks that behave as proper nouns: always capitalised


def _vocabulary(rng: np.random.Generator) -> list[bytes]:
    """Pronounceable pseudo-words, shortest first so frequent words are short (as in real text)."""
    k = 3 * _VOCAB_SIZE
    syllables = np.minimum(rng.geometric(0.45, size=k), 4)
    onset = rng.integers(len(_ONSETS), size=(k, 4))
    vowel = rng.integers(len(_VOWELS), size=(k, 4))
    coda = rng.integers(len(_CODAS), size=(k, 4))
    suffix = rng.integers(len(_SUFFIXES), size=k)
    words: dict[bytes, None] = {}  # ordered and hash-seed independent, unlike a set
    for i in range(k):
        parts = (_ONSETS[onset[i, j]] + _VOWELS[vowel[i, j]] + _CODAS[coda[i, j]]
                 for j in range(syllables[i]))
        words[b"".join(parts) + _SUFFIXES[suffix[i]]] = None
    return sorted(words, key=len)[:_VOCAB_SIZE]


def _sentence_layout(rng: np.random.Generator, n_sentences: int) -> tuple[np.ndarray, np.ndarray]:
    """Sentence lengths and, per sentence, the earlier sentence it repeats (itself if none).

    Repeating whole sentences a few hundred bytes to a few kilobytes back gives
    the corpus long-range structure beyond what word statistics explain.
    """
    source = np.arange(n_sentences)
    repeats = rng.random(n_sentences) < 0.1
    source[repeats] = np.maximum(source[repeats] - rng.integers(1, 40, size=repeats.sum()), 0)
    while not np.array_equal(source[source], source):  # follow chains to an original
        source = source[source]
    lengths = rng.integers(3, 16, size=n_sentences)[source]
    return lengths, source


def _chain_successors(rng: np.random.Generator, words: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Make about a quarter of words the fixed successor of the previous word (bigram structure).

    A run of k followers after a free word w is succ^k(w), so one gather from
    a table of successor powers replaces a sequential loop over the corpus.
    """
    successor = rng.choice(len(p), size=len(p), p=p)
    follows = rng.random(len(words)) < 0.25
    follows[0] = False
    positions = np.arange(len(words))
    free = np.maximum.accumulate(np.where(follows, 0, positions))  # last free word at or before
    steps = positions - free
    powers = [np.arange(len(p))]
    for _ in range(int(steps.max(initial=0))):
        powers.append(successor[powers[-1]])
    return np.stack(powers)[steps, words[free]]


def _word_sequence(
    rng: np.random.Generator, n_sentences: int, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Word ids, separator ids and a sentence-start mask for n_sentences sentences."""
    lengths, source = _sentence_layout(rng, n_sentences)
    starts = np.cumsum(lengths) - lengths
    n_words = int(lengths.sum())
    sentence = np.repeat(np.arange(n_sentences), lengths)
    offset = np.arange(n_words) - starts[sentence]
    words = _chain_successors(rng, rng.choice(len(p), size=n_words, p=p), p)
    words = words[starts[source[sentence]] + offset]  # originals map onto themselves

    separators = np.where(rng.random(n_words) < 0.07, 1, 0)
    ends = starts + lengths - 1
    punct = rng.choice(3, size=n_sentences, p=[0.85, 0.1, 0.05])
    newline = rng.random(n_sentences) < 0.15
    separators[ends] = 2 + punct + 3 * newline
    sentence_start = np.zeros(n_words, dtype=bool)
    sentence_start[starts] = True
    return words, separators, sentence_start


def _render(tokens: np.ndarray, table: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate table[t] for every token t with one gather; also return each token's start."""
    flat = np.frombuffer(b"".join(table), dtype=np.uint8)
    sizes = np.array([len(t) for t in table])
    table_start = np.cumsum(sizes) - sizes
    out_sizes = sizes[tokens]
    out_start = np.cumsum(out_sizes) - out_sizes
    shift = np.repeat(table_start[tokens] - out_start, out_sizes)
    return flat[np.arange(int(out_sizes.sum())) + shift], out_start


def _generate(n_sentences: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / (ranks + 2.0) ** 1.05  # Zipf-Mandelbrot, as word frequencies in natural text
    p /= p.sum()
    words, separators, sentence_start = _word_sequence(rng, n_sentences, p)
    tokens = np.empty(2 * len(words), dtype=np.int64)
    tokens[0::2] = words
    tokens[1::2] = len(vocab) + separators
    out, start = _render(tokens, vocab + list(_SEPARATORS))
    is_name = (words >= _NAMES.start) & (words < _NAMES.stop)
    out[start[0::2][sentence_start | is_name]] -= ord("a") - ord("A")  # words start with a-z
    return out


def generate_corpus(n_bytes: int, seed: int) -> bytes:
    """A synthetic byte corpus with structure a small RNN can learn (deterministic in seed).

    It stands in for enwik8 in tests and smoke runs: Zipf-distributed
    pseudo-words with sub-word regularities, fixed bigrams, capitalised
    sentence starts and names, punctuation, newlines, and repeated sentences.
    """
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
    n_sentences = n_bytes // 30 + 16  # ~36 bytes per sentence: one pass nearly always suffices
    out = _generate(n_sentences, seed)
    while len(out) < n_bytes:
        n_sentences *= 2
        out = _generate(n_sentences, seed)
    return out[:n_bytes].tobytes()


# --------------------------------------------------------------------------- splits


def split_bounds(n: int) -> list[tuple[int, int]]:
    """(start, stop) of train/valid/test for an n-byte corpus: 90/5/5 by position. For n == 10**8 this must give exactly 90M/5M/5M.

    Splitting by position (not by random windows) keeps evaluation text unseen
    in training, and integer arithmetic keeps the cut points exact.
    """
    if n < 0:
        raise ValueError(f"corpus size must be >= 0, got {n}")
    a, b = n * 90 // 100, n * 95 // 100
    return [(0, a), (a, b), (b, n)]


def _shortest_split(n: int) -> int:
    return min(stop - start for start, stop in split_bounds(n))


def _check_long_enough(n: int, min_bytes: int, where: str) -> None:
    """Fail before training if any split cannot hold one training window."""
    if _shortest_split(n) >= min_bytes:
        return
    needed = max(20 * min_bytes - 40, 1)
    while _shortest_split(needed) < min_bytes:
        needed += 1
    raise DataError(
        f"the corpus at {where} is too short: {n:,} bytes, needs at least {needed:,} for a window "
        f"of {min_bytes:,} (valid and test get 5% each and must each hold one window); "
        "use a longer corpus or a smaller history_size"
    )


def _local_corpus(source: str) -> tuple[np.ndarray, Path]:
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise DataError(
            f"corpus file {path} does not exist or is not a file; "
            "give 'enwik8', 'generated' or the path of an existing byte file"
        )
    if path.stat().st_size == 0:
        raise DataError(f"corpus file {path} is empty; give a non-empty byte file")
    return np.memmap(path, dtype=np.uint8, mode="r"), path


def _load_source(
    source: str, cache_dir: Path, url: str | None, sha256: str | None,
    generated_bytes: int | None, seed: int | None, expected_bytes: int,
) -> tuple[np.ndarray, str, str]:
    """The corpus bytes, the name recorded in corpus.json, and where to point the user on errors."""
    if source == "enwik8":
        if url is None:
            raise DataError("enwik8 needs the address to download it from (enwik8_url)")
        path = fetch_enwik8(cache_dir, url, sha256, expected_bytes=expected_bytes)
        return np.memmap(path, dtype=np.uint8, mode="r"), "enwik8", str(path)
    if source == "generated":
        if generated_bytes is None or seed is None:
            raise DataError("a generated corpus needs its size and seed (generated_bytes, seed)")
        corpus = np.frombuffer(generate_corpus(generated_bytes, seed), dtype=np.uint8)
        where = f"generated corpus (generated_bytes={generated_bytes}, seed={seed})"
        return corpus, "generated", where
    corpus, path = _local_corpus(source)
    return corpus, str(path), str(path)


def prepare_corpus(
    source: str,
    out_dir: Path,
    *,
    cache_dir: Path,
    url: str | None = None,
    sha256: str | None = None,
    generated_bytes: int | None = None,
    seed: int | None = None,
    min_bytes: int = 0,
    expected_bytes: int = ENWIK8_BYTES,
) -> dict:
    """Write out_dir/train.bin, valid.bin, test.bin and out_dir/corpus.json; return the metadata dict (source, total bytes, per-split sizes, sha256 of the whole corpus).

    corpus.json is removed first and written last, so its presence means the
    three .bin files beside it are complete and match it.
    """
    corpus, name, where = _load_source(
        source, Path(cache_dir), url, sha256, generated_bytes, seed, expected_bytes
    )
    _check_long_enough(len(corpus), max(min_bytes, 2), where)  # a window is at least 2 bytes
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / CORPUS_META
    meta_path.unlink(missing_ok=True)
    bounds = split_bounds(len(corpus))
    for split, (start, stop) in zip(SPLITS, bounds):
        with atomic_open(split_path(out_dir, split), "wb") as handle:
            handle.write(corpus[start:stop])
    meta = {
        "source": name,
        "total_bytes": len(corpus),
        "splits": {split: stop - start for split, (start, stop) in zip(SPLITS, bounds)},
        "sha256": hashlib.sha256(corpus).hexdigest(),
        "split_sha256": {split: hashlib.sha256(corpus[start:stop]).hexdigest() for split, (start, stop) in zip(SPLITS, bounds)},
    }
    atomic_write_json(meta_path, meta)
    return meta


def check_splits(data_dir: Path, shas: dict[str, str]) -> None:
    """Refuse splits whose bytes (`shas`: split -> SHA-256) are not the ones corpus.json records for them.

    The corpus step writes corpus.json last, with the hash of each split it wrote; a split edited, cut or
    replaced since then would otherwise be trained and scored as if it were the corpus.
    """
    path = Path(data_dir).expanduser() / CORPUS_META
    try:
        recorded = json.loads(path.read_text())["split_sha256"]
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: the corpus step did not finish; run it again") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is damaged ({err!r}); run the corpus step again") from None
    for split, sha in shas.items():
        if not isinstance(recorded, dict) or recorded.get(split) != sha:
            raise DataError(
                f"{split_path(data_dir, split)} is not the split {path.name} records (its SHA-256 differs): "
                "it was changed after the corpus step; run that step again (snakemake -R corpus)"
            )


def split_path(data_dir: Path, split: str) -> Path:
    """Where a split's bytes live in a data folder."""
    return Path(data_dir).expanduser() / f"{split}.bin"


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """The split as a read-only uint8 numpy memmap (no decoding, no copy).

    Memory-mapping lets many concurrent training jobs share one page-cached
    copy of the 90 MB train split instead of each reading it into RAM.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = split_path(data_dir, split)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run prepare_corpus (the prepare step) first")
    if path.stat().st_size == 0:  # mmap refuses empty files
        empty = np.zeros(0, dtype=np.uint8)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=np.uint8, mode="r")


def held_out_windows(data: np.ndarray, eval_bytes: int, history_size: int, widths: np.ndarray | None = None) -> np.ndarray:
    """The (n, history_size) windows a split is scored on: the same fixed slice for every run.

    The slice is the tokens that lie wholly within the split's first `eval_bytes` bytes (all of it if
    shorter; at least one window). `widths` gives the bytes each id stands for (None: ids are bytes).
    Windows of `history_size` tokens overlap by one, so that every token of the slice after the first is
    predicted exactly once, from the state reset at the start of its window, as in training.
    """
    step = history_size - 1
    within = eval_bytes
    if widths is not None:  # tokens whose last byte is within the slice
        within = int(np.searchsorted(np.cumsum(widths[data[:eval_bytes]]), eval_bytes, side="right"))
    usable = min(max(within, history_size), len(data))
    starts = np.arange((usable - 1) // step) * step
    return data[starts[:, None] + np.arange(history_size)]
