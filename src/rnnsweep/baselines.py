"""What simple methods get on the bytes the models are scored on: byte n-gram models and compressors.

An RNN's `test_bpb` means little alone. Two kinds of reference place it:

* **Byte n-gram models** of order 0 to `max_order` (order k predicts a byte from the k bytes
  before it), counted on the training split and scored on the test slice exactly as a run
  is: the same windows (rnnsweep.data.held_out_windows), the context never reaching back
  past a window's start. Unseen events get probability through interpolated Witten-Bell
  smoothing, the escape estimate of PPM method C used as an interpolation weight:

      P_k(b | c) = (n(c, b) + t(c) P_{k-1}(b | c')) / (n(c) + t(c))

  where n(c, b) counts byte b after context c in training, n(c) counts c, t(c) is the number
  of distinct bytes seen after c, c' is c without its oldest byte, and P_{-1} is uniform
  (1/256). A context never seen in training (n(c) = 0) leaves P_{k-1} as it is. Every P_k
  sums to one over the 256 bytes, so its log loss is a true code length.
* **General compressors** (gzip -9, bzip2 -9, xz -9e, zstd -19) on the same slice: 8 x the
  compressed size over the bytes in. A compressor learns as it reads the slice, from nothing;
  a model learns from the training split and is scored on bytes it has never seen. The two
  kinds are references of different sorts, not competitors under one rule.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zstandard

from rnnsweep import config
from rnnsweep.data import SPLITS, DataError, held_out_windows, load_split
from rnnsweep.provenance import data_id

#: The highest order, the schema's bound: a context and its next byte, order + 1 bytes, are one int64 key.
MAX_ORDER: int = config.node(("baselines", "max_order"))["maximum"]
#: Columns of baselines.csv: one row per method; `bytes` is how many bytes its bits are spread over.
COLUMNS = ("method", "kind", "order", "bytes", "bpb", "nats", "data")

#: Name -> bytes to compressed bytes, at the settings the Large Text Compression Benchmark quotes.
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip -9": lambda raw: gzip.compress(raw, compresslevel=9, mtime=0),
    "bzip2 -9": lambda raw: bz2.compress(raw, compresslevel=9),
    "xz -9e": lambda raw: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME),
    "zstd -19": lambda raw: zstandard.ZstdCompressor(level=19).compress(raw),
}


# ---------------------------------------------------------------------------- n-gram models


def _keys(columns: list[np.ndarray]) -> np.ndarray:
    """Equal-length byte columns read as base-256 numbers, the first column most significant."""
    keys = np.zeros(columns[0].shape, dtype=np.int64)
    for column in columns:
        keys = (keys << 8) | column
    return keys


def _lookup(table: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[i] where table[i] == query (table sorted), else 0."""
    if len(table) == 0:
        return np.zeros(queries.shape, dtype=values.dtype)
    at = np.minimum(np.searchsorted(table, queries), len(table) - 1)
    return np.where(table[at] == queries, values[at], 0)


@dataclass(frozen=True)
class OrderCounts:
    """The training counts of one order k: every (k-byte context, next byte) pair, and per context its totals."""

    pairs: np.ndarray  # sorted keys: context then next byte, base 256
    pair_counts: np.ndarray  # n(c, b)
    contexts: np.ndarray  # sorted context keys (pair key >> 8)
    context_counts: np.ndarray  # n(c)
    context_types: np.ndarray  # t(c): distinct next bytes

    @classmethod
    def count(cls, train: np.ndarray, order: int) -> OrderCounts:
        n = len(train) - order
        train = train.astype(np.int64)
        pairs, pair_counts = np.unique(_keys([train[i:i + n] for i in range(order + 1)]), return_counts=True)
        # Pairs sorted by key are sorted, and so grouped, by context.
        contexts, first, context_types = np.unique(pairs >> 8, return_index=True, return_counts=True)
        context_counts = np.add.reduceat(pair_counts, first) if len(first) else pair_counts[:0]
        return cls(pairs, pair_counts, contexts, context_counts, context_types)


class NGramModel:
    """Interpolated Witten-Bell byte n-gram models of every order up to `max_order`, counted on one split."""

    def __init__(self, train: np.ndarray, max_order: int) -> None:
        self.orders = [OrderCounts.count(np.asarray(train), k) for k in range(max_order + 1)]

    def probabilities(self, windows: np.ndarray) -> Iterator[np.ndarray]:
        """For k = 0, 1, ...: P_k of each window's byte j given the bytes before it in the window, j >= 1.

        Yields (n, history - 1) arrays; near a window's start, where fewer than k bytes
        precede, the highest order the window allows stands in.
        """
        windows = np.asarray(windows, dtype=np.int64)  # (n, H)
        positions = np.arange(1, windows.shape[1])  # the predicted bytes' places in a window
        p = np.full((len(windows), len(positions)), 1 / 256)  # P_{-1}: uniform
        for k, counts in enumerate(self.orders):
            # Columns k bytes back to the predicted one; before a window's start they are masked below.
            pairs = _keys([windows[:, np.maximum(positions - k + i, 0)] for i in range(k + 1)])  # (n, H-1)
            n_cb = _lookup(counts.pairs, counts.pair_counts, pairs)
            n_c = _lookup(counts.contexts, counts.context_counts, pairs >> 8)
            t_c = _lookup(counts.contexts, counts.context_types, pairs >> 8)
            known = (positions >= k) & (n_c > 0)
            p = np.where(known, (n_cb + t_c * p) / np.maximum(n_c + t_c, 1), p)
            yield p


# ---------------------------------------------------------------------------- the table


def _row(method: str, kind: str, order: int | None, n_bytes: int, bits: float, data: str) -> dict:
    bpb = bits / n_bytes
    return {"method": method, "kind": kind, "order": order, "bytes": n_bytes, "bpb": bpb,
            "nats": bpb * math.log(2), "data": data}


def baselines(data_dir: Path, eval_bytes: int, history_size: int, max_order: int) -> pd.DataFrame:
    """Every baseline's bits per byte on the test slice that runs scored with `eval_bytes` and `history_size` see."""
    train, valid, test = (load_split(Path(data_dir), split) for split in SPLITS)
    corpus = data_id(train, valid, test)
    windows = held_out_windows(test, eval_bytes, history_size)  # (n, H), overlapping by one byte
    if len(windows) == 0:
        raise DataError(f"the test split in {data_dir} holds {len(test)} bytes, fewer than one window of {history_size}")
    rows = []
    for k, p in enumerate(NGramModel(train, max_order).probabilities(windows)):
        rows.append(_row(f"order-{k} n-gram", "n-gram", k, p.size, float(-np.log2(p).sum()), corpus))
    # The windows' bytes, each once: the first window whole, then each next window's new bytes.
    text = np.concatenate([windows[0], windows[1:, 1:].ravel()]).astype(np.uint8).tobytes()
    for name, compress in COMPRESSORS.items():
        rows.append(_row(name, "compressor", None, len(text), 8.0 * len(compress(text)), corpus))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["order"] = table["order"].astype("Int64")
    return table


def read_baselines(path: Path) -> pd.DataFrame:
    """A baselines table, refused unless it has its columns and rows."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a baselines table ({err}); rerun `rnnsweep baselines`") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing or table.empty:
        raise DataError(f"{path} lacks {', '.join(missing) or 'rows'}; rerun `rnnsweep baselines`")
    return table


def check_same_bytes(table: pd.DataFrame, summary: pd.DataFrame, what: str) -> None:
    """Refuse to set baselines beside runs that read another corpus: their numbers would not compare."""
    ours, theirs = set(table["data"].astype(str)), set(summary["data"].astype(str))
    if theirs - ours:
        raise DataError(f"{what} read corpus {', '.join(sorted(theirs - ours))} but the baselines scored "
                        f"{', '.join(sorted(ours))}; rerun `rnnsweep baselines` on the study's splits")
