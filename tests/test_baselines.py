"""Baselines (rnnsweep.baselines): Witten-Bell n-grams against a plain rewrite of the formula, and compressors."""

from __future__ import annotations

import bz2
import math
from collections import Counter

import numpy as np
import pytest

from rnnsweep.baselines import COLUMNS, COMPRESSORS, NGramModel, baselines
from rnnsweep.data import load_split
from rnnsweep.provenance import data_id
from rnnsweep.data import held_out_windows


def witten_bell(train: bytes, context: bytes, byte: int, order: int) -> float:
    """P_order(byte | the last `order` bytes of context), straight from the recursion with dictionaries."""
    if order < 0:
        return 1 / 256
    lower = witten_bell(train, context, byte, order - 1)
    if len(context) < order:
        return lower
    c = context[len(context) - order:]
    after = Counter(train[i + order] for i in range(len(train) - order) if train[i:i + order] == c)
    n_c, t_c = sum(after.values()), len(after)
    return lower if n_c == 0 else (after[byte] + t_c * lower) / (n_c + t_c)


@pytest.fixture(scope="module")
def text() -> tuple[np.ndarray, np.ndarray]:
    """Training bytes from a small alphabet with structure, and held-out bytes that include unseen ones."""
    rng = np.random.default_rng(3)
    train = np.frombuffer(b"".join(rng.choice([b"abra", b"cad", b"abra ", b"x"], 300)), np.uint8)
    test = np.frombuffer(b"abracadabra zebra! cadabra xx abra", np.uint8)
    return train, test


def test_every_order_matches_the_formula_written_out(text):
    train, test = text
    windows = held_out_windows(test, len(test), 9)
    for k, p in enumerate(NGramModel(train, 4).probabilities(windows)):
        expected = [[witten_bell(train.tobytes(), w[:j].tobytes(), w[j], k) for j in range(1, len(w))] for w in windows]
        assert p == pytest.approx(np.array(expected), rel=1e-12)


def test_each_order_is_a_distribution_over_the_256_bytes(text):
    train, _ = text
    for prefix in (b"abr", b"zz!", b"ra "):  # a seen context, an unseen one, one seen rarely
        windows = np.array([list(prefix) + [b] for b in range(256)], dtype=np.uint8)
        for p in NGramModel(train, 4).probabilities(windows):
            assert p[:, -1].sum() == pytest.approx(1.0, abs=1e-12)
            assert (p > 0).all()


def test_higher_orders_predict_structured_text_better(text):
    train, _ = text
    windows = held_out_windows(train[:600], 600, 50)
    bits = [-np.log2(p).mean() for p in NGramModel(train, 4).probabilities(windows)]
    assert bits == sorted(bits, reverse=True) and bits[-1] < bits[0] / 2


def test_the_table_scores_the_runs_slice_and_names_the_corpus(data_dir):
    table = baselines(data_dir, 3000, 20, 3)
    splits = [load_split(data_dir, s) for s in ("train", "valid", "test")]
    windows = held_out_windows(splits[2], 3000, 20)
    assert tuple(table.columns) == COLUMNS
    assert table["method"].tolist() == [f"order-{k} n-gram" for k in range(4)] + list(COMPRESSORS)
    assert (table["data"] == data_id(*splits)).all()
    # The models predict what a run predicts; the compressors read those bytes once, plus the first.
    grams, packers = table.loc[table["kind"] == "n-gram"], table.loc[table["kind"] == "compressor"]
    assert (grams["bytes"] == windows.shape[0] * (windows.shape[1] - 1)).all()
    assert (packers["bytes"] == grams["bytes"].iloc[0] + 1).all()
    slice_ = splits[2][: packers["bytes"].iloc[0]].tobytes()
    bzip2 = table.set_index("method").loc["bzip2 -9"]
    assert bzip2["bpb"] == pytest.approx(8 * len(bz2.compress(slice_, 9)) / len(slice_))
    assert table["nats"].tolist() == pytest.approx((table["bpb"] * math.log(2)).tolist())


def test_compressors_tell_noise_from_repetition():
    noise = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    repeated = b"the same line again\n" * 1000
    for name, compress in COMPRESSORS.items():
        assert 8 * len(compress(noise)) / len(noise) > 7.9, name
        assert 8 * len(compress(repeated)) / len(repeated) < 0.5, name
