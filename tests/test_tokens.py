"""BPE tokens: the vocabulary, the id files, the checks on them, and runs that read them on the bytes' scale."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from designs import all_on
from rnnsweep import cli, provenance
from rnnsweep.aggregate import SummaryError
from rnnsweep.data import SPLITS, DataError, load_split, prepare_corpus, split_path
from rnnsweep.design import BYTE_VOCAB
from rnnsweep.grid import ManifestError, make_runs, read_manifest, write_manifest
from rnnsweep.layout import TOKENIZER, TOKENS_META
from rnnsweep.stats import tokenizer_table
from rnnsweep.tokens import BYTES, encode, ids_path, load_text, pieces_of, prepare_tokens, read_tokenizer, train_bpe
from rnnsweep.train import EMA_DECAY, EMA_START, Interrupted, train_run

CPU = torch.device("cpu")
VOCAB = 300
SETTINGS = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-2, eval_bytes=200)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20 kB generated corpus, split, with a vocabulary of VOCAB learnt from its training split."""
    root = tmp_path_factory.mktemp("bpe")
    prepare_corpus("generated", root / "data", cache_dir=root / "cache", generated_bytes=20_000, seed=0)
    prepare_tokens(root / "data", VOCAB)
    return root / "data"


def _copy(bpe_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bpe_dir, tmp_path / "data"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- the vocabulary and the id files


def test_ids_decode_to_exactly_the_bytes_of_each_split(bpe_dir):
    text = load_text(bpe_dir, "bpe", VOCAB)
    assert text.vocab.size == VOCAB
    for split, ids in zip(SPLITS, text.splits):
        raw = load_split(bpe_dir, split).tobytes()
        assert ids.dtype == np.uint16 and len(ids) < len(raw)  # merges shorten the text
        assert text.vocab.decode(ids) == raw
    meta = json.loads((bpe_dir / TOKENS_META).read_text())
    assert {split: meta["splits"][split]["tokens"] for split in SPLITS} == {s: len(i) for s, i in zip(SPLITS, text.splits)}


def test_any_bytes_encode_losslessly_and_line_by_line_as_whole():
    """Not text at all (every byte value, no valid UTF-8), encoded by lines, is what the library gives for the whole."""
    rng = np.random.default_rng(0)
    words = [bytes(rng.integers(256, size=rng.integers(1, 6)).astype(np.uint8)) for _ in range(40)]
    corpus = b" ".join(words[i] for i in rng.integers(len(words), size=3000)) + b"\n\n\r\n\xff\x00"
    tokenizer = train_bpe(corpus, 320)
    pieces = pieces_of(tokenizer)
    assert len(pieces) == 320 and set(pieces) >= {bytes([b]) for b in range(BYTE_VOCAB)}  # every byte has an id
    ids = encode(tokenizer, corpus)
    assert b"".join(pieces[i] for i in ids) == corpus
    assert ids.tolist() == tokenizer.encode(corpus.decode("latin-1")).ids


def test_the_vocabulary_is_the_same_each_time(bpe_dir, tmp_path):
    again = _copy(bpe_dir, tmp_path)
    prepare_tokens(again, VOCAB)
    assert _files(again) == _files(bpe_dir)


def test_a_vocabulary_the_split_cannot_support_writes_nothing(bpe_dir, tmp_path, capsys):
    data = _copy(bpe_dir, tmp_path)
    before = _files(data)
    with pytest.raises(DataError, match="supports a vocabulary of .* not vocab_size 60000"):
        prepare_tokens(data, 60_000)
    code = cli.main(["tokenize", "--data", str(data), "--vocab-size", "60000"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rnnsweep tokenize: error: the training split")
    assert _files(data) == before


# --------------------------------------------------------------------------- what a run reads, checked


def _tokenizer_of_other_text(data: Path, vocab: int) -> None:
    """Replace the vocabulary by one learnt from other bytes (the test split), as a hand-edit or a stale copy would."""
    other = train_bpe(load_split(data, "test").tobytes() * 3, vocab)
    (data / TOKENIZER).write_text(other.to_str())


def _ids_out_of_range(data: Path, vocab: int) -> None:
    """An id file holding an id the vocabulary lacks, recorded in tokens.json as if the tokenizer had written it."""
    ids = np.fromfile(ids_path(data, "valid"), dtype="<u2")
    ids[3] = vocab
    ids.tofile(ids_path(data, "valid"))
    meta = json.loads((data / TOKENS_META).read_text())
    meta["splits"]["valid"]["ids_sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
    (data / TOKENS_META).write_text(json.dumps(meta))


def _other_bytes(data: Path, vocab: int) -> None:
    """The corpus step made other bytes (corpus.json says so), but the ids are still the old bytes'."""
    raw = bytearray(split_path(data, "test").read_bytes())
    raw[0] ^= 1
    split_path(data, "test").write_bytes(bytes(raw))
    meta = json.loads((data / "corpus.json").read_text())
    meta["split_sha256"]["test"] = hashlib.sha256(bytes(raw)).hexdigest()
    (data / "corpus.json").write_text(json.dumps(meta))


def _damaged_ids(data: Path, vocab: int) -> None:
    ids_path(data, "train").write_bytes(ids_path(data, "train").read_bytes()[:-2] + b"\x00\x00")


def _damaged_record(data: Path, vocab: int) -> None:
    meta = json.loads((data / TOKENS_META).read_text())
    meta["splits"]["test"]["tokens"] = None
    (data / TOKENS_META).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (_tokenizer_of_other_text, "not the tokenizer the id files were made with"),
    (_ids_out_of_range, "holds id 300, out of range for a vocabulary of 300"),
    (_other_bytes, "made from other bytes than the split"),
    (_damaged_ids, "not the id file tokens.json records"),
    (_damaged_record, "tokens.json is damaged .*test.tokens of the wrong type"),
])
def test_ids_that_do_not_belong_to_the_splits_are_refused(bpe_dir, tmp_path, damage, message):
    data = _copy(bpe_dir, tmp_path)
    damage(data, VOCAB)
    with pytest.raises(DataError, match=message):
        load_text(data, "bpe", VOCAB)


def test_a_worker_on_ids_that_do_not_belong_stops_with_one_line(bpe_dir, tmp_path, capsys):
    data = _copy(bpe_dir, tmp_path)
    stage = tmp_path / "results" / "stage1"
    runs = make_runs([all_on(n_layers=1, state_size=4)], {**SETTINGS, "tokenizer": "bpe", "vocab_size": VOCAB})
    write_manifest(stage / "manifest.csv", runs)
    _tokenizer_of_other_text(data, VOCAB)
    args = ["worker", "--manifest", str(stage / "manifest.csv"), "--data", str(data), "--device", "cpu",
            "--threads-per-worker", "1", "--lock", "filelock", "--checkpoint-every", "0"]
    code = cli.main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not the tokenizer the id files were made with" in lines[0]
    assert not (stage / "runs").exists()


def test_a_split_shorter_than_a_window_of_tokens_stops_the_worker_before_it_writes(bpe_dir, tmp_path, capsys):
    """The corpus step checks each split holds a window of bytes; in tokens a split is shorter, so it is checked again."""
    valid = load_text(bpe_dir, "bpe", VOCAB).splits[1]
    history = len(valid) + 1
    assert history < len(load_split(bpe_dir, "valid"))  # enough bytes, too few tokens
    stage = tmp_path / "results" / "stage1"
    settings = {**SETTINGS, "history_size": history, "tokenizer": "bpe", "vocab_size": VOCAB}
    write_manifest(stage / "manifest.csv", make_runs([all_on(n_layers=1, state_size=4)], settings))
    args = ["worker", "--manifest", str(stage / "manifest.csv"), "--data", str(bpe_dir), "--device", "cpu",
            "--threads-per-worker", "1", "--lock", "filelock", "--checkpoint-every", "0"]
    code = cli.main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert f"the valid split in {bpe_dir} holds {len(valid):,} bpe tokens, fewer than one window of {history:,}" in lines[0]
    assert not (stage / "runs").exists()


def test_runs_must_ask_for_the_vocabulary_the_folder_holds(bpe_dir):
    with pytest.raises(DataError, match="has 300 pieces, but the runs ask for vocab_size 512"):
        load_text(bpe_dir, "bpe", 512)
    with pytest.raises(DataError, match="tokenizer bytes has vocab_size 256, not 300"):
        load_text(bpe_dir, "bytes", VOCAB)


# --------------------------------------------------------------------------- manifests and fingerprints


def test_the_manifest_says_what_each_run_reads(tmp_path):
    design = all_on(n_layers=1, state_size=4)
    runs = make_runs([design], {**SETTINGS, "tokenizer": "bpe", "vocab_size": VOCAB})
    path = tmp_path / "manifest.csv"
    write_manifest(path, runs)
    assert read_manifest(path) == runs and runs[0].vocab_size == VOCAB
    old = pd.read_csv(path).drop(columns=["tokenizer", "vocab_size"])  # a manifest from before tokenizers
    old.to_csv(path, index=False)
    assert read_manifest(path) == [dataclasses.replace(runs[0], tokenizer="bytes", vocab_size=BYTE_VOCAB)]
    for column, value, message in (("tokenizer", "words", "tokenizer 'words' is not one of bytes, bpe"),
                                   ("vocab_size", "256", "needs vocab_size above 256")):
        write_manifest(path, runs)
        frame = pd.read_csv(path)
        frame[column] = value
        frame.to_csv(path, index=False)
        with pytest.raises(ManifestError, match=message):
            read_manifest(path)


def test_a_bpe_fingerprint_changes_with_the_vocabulary_and_the_ids_a_byte_one_does_not_know_them():
    design = all_on(n_layers=1, state_size=4)
    byte_run = make_runs([design], SETTINGS)[0]
    bpe_run = make_runs([design], {**SETTINGS, "tokenizer": "bpe", "vocab_size": VOCAB})[0]
    data = "0" * 16
    assert provenance.fingerprint(byte_run, data) == provenance.fingerprint(byte_run, data, "a" * 16)
    with pytest.raises(ValueError, match="needs the tokens' id"):
        provenance.fingerprint(bpe_run, data)
    prints = {
        provenance.fingerprint(bpe_run, data, "a" * 16),
        provenance.fingerprint(bpe_run, data, "b" * 16),
        provenance.fingerprint(dataclasses.replace(bpe_run, vocab_size=VOCAB + 1), data, "a" * 16),
        provenance.fingerprint(byte_run, data),
    }
    assert len(prints) == 4


def test_retokenize_keeps_every_run_but_what_it_reads(tmp_path, capsys):
    design = all_on(n_layers=1, state_size=4)
    runs = make_runs([design], SETTINGS, replicates=3, base_seed=5)
    write_manifest(tmp_path / "stage3" / "manifest.csv", runs)
    out = tmp_path / "stage3-bpe" / "manifest.csv"
    code = cli.main(["retokenize", "--manifest", str(tmp_path / "stage3" / "manifest.csv"), "--out", str(out),
                     "--tokenizer", "bpe", "--vocab-size", str(VOCAB)])
    assert code == 0
    assert read_manifest(out) == [dataclasses.replace(run, tokenizer="bpe", vocab_size=VOCAB) for run in runs]
    code = cli.main(["retokenize", "--manifest", str(tmp_path / "stage3" / "manifest.csv"), "--out", str(out),
                     "--tokenizer", "bpe"])
    assert code == 2 and "needs --vocab-size" in capsys.readouterr().err


# --------------------------------------------------------------------------- training on ids


def test_a_bpe_run_trains_scores_in_bits_per_byte_and_resumes_exactly(bpe_dir, tmp_path, one_thread):
    text = load_text(bpe_dir, "bpe", VOCAB)
    run = make_runs([all_on(n_layers=2, state_size=4)], {**SETTINGS, "tokenizer": "bpe", "vocab_size": VOCAB})[0]
    whole = train_run(run, text, tmp_path / "whole", CPU)
    assert whole["status"] == "ok" and whole["params"] > 0
    assert whole["test_bytes"] > whole["test_tokens"] > 0  # a token covers more than a byte on average
    assert whole["test_bytes"] <= SETTINGS["eval_bytes"] and math.isfinite(whole["test_bpb"])
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["tokens"] == text.vocab.id and config["fingerprint"] == text.fingerprint(run)

    stop = threading.Event()

    def report(step: int, ema: float, rate: float) -> None:
        if step >= 10:  # 10 steps into windows of 7 steps: the checkpoint holds a window of ids above 255
            stop.set()

    with pytest.raises(Interrupted):
        train_run(run, text, tmp_path / "resumed", CPU, report=report, stop=stop)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["batch"].max() > 255
    resumed = train_run(run, text, tmp_path / "resumed", CPU)
    for key in ("min_loss", "final_loss", "valid_bpb", "test_bpb", "test_bytes", "test_tokens", "fingerprint"):
        assert resumed[key] == whole[key], key


def test_runs_cannot_read_ids_of_another_vocabulary(bpe_dir, tmp_path):
    text = load_text(bpe_dir, "bpe", VOCAB)
    byte_run = make_runs([all_on(n_layers=1, state_size=4)], SETTINGS)[0]
    with pytest.raises(ValueError, match="cannot read ids of a vocabulary of 300"):
        train_run(byte_run, text, tmp_path / "run", CPU)
    assert load_text(bpe_dir).vocab is BYTES


def test_read_tokenizer_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(DataError, match="run the tokenize step"):
        read_tokenizer(tmp_path)
    (tmp_path / TOKENIZER).write_text("{not json")
    with pytest.raises(DataError, match="is not a tokenizer file"):
        read_tokenizer(tmp_path)


# --------------------------------------------------------------------------- the comparison table


def _summary(tokenizer: str, vocab: int, bpb: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for k, (config_id, values) in enumerate(bpb.items()):
        for replicate, value in enumerate(values):
            rows.append({
                "id": f"{config_id}-r{replicate}", "config_id": config_id, **dict.fromkeys(
                    ("use_input_gate", "use_forget_gate", "use_output_gate", "use_state_gate", "use_residual"), k == 0),
                "use_new_state": True, "use_old_state": False, "n_layers": 1, "state_size": 8,
                "seed": replicate, "steps": 10, "batch_size": 4, "history_size": 8, "lr": 0.01, "eval_bytes": 100,
                "tokenizer": tokenizer, "vocab_size": vocab, "status": "ok", "min_loss": value, "test_bpb": value,
                "steps_per_s": 100.0 if tokenizer == "bytes" else 60.0, "wall_s": 2.0, "test_tokens": 50,
                "test_bytes": 50 if tokenizer == "bytes" else 150, "params": 1000,
            })
    return pd.DataFrame(rows)


def test_the_comparison_pairs_each_seed_with_itself():
    base = _summary("bytes", 256, {"aaa": [2.0, 2.2, 2.4], "bbb": [1.0, 1.1, 1.2]})
    other = _summary("bpe", 2048, {"aaa": [1.9, 2.0, 2.3], "bbb": [1.3, 1.3, 1.3]})
    table = tokenizer_table(base, other)
    assert table["config_id"].tolist() == ["bbb", "bbb", "aaa", "aaa"]  # by the first tokenizer's mean
    row = table.iloc[1]  # bbb under bpe
    assert row["tokenizer"] == "bpe" and row["n"] == 3 and row["bytes_per_token"] == 3.0
    assert row["diff_mean"] == pytest.approx(0.2)
    diffs = np.array([0.3, 0.2, 0.1])
    half = 4.302652729911275 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert math.isnan(table.iloc[0]["diff_mean"])
    with pytest.raises(SummaryError, match="same runs"):
        tokenizer_table(base, base)
    with pytest.raises(SummaryError, match="same runs"):  # the same ids, but other seeds: not a pairing
        tokenizer_table(base, other.assign(seed=1))


def test_a_bpe_runs_ema_starts_at_the_byte_start_per_byte(bpe_dir, tmp_path, one_thread):
    """The EMA starts at EMA_START nats per byte, i.e. times the training split's bytes per token for BPE."""
    text = load_text(bpe_dir, "bpe", VOCAB)
    meta = json.loads((bpe_dir / TOKENS_META).read_text())["splits"]["train"]
    assert text.vocab.bytes_per_token == meta["bytes"] / meta["tokens"] > 1.2
    run = make_runs([all_on(n_layers=1, state_size=4)], {**SETTINGS, "steps": 1, "log_every": 1,
                                                          "tokenizer": "bpe", "vocab_size": VOCAB})[0]
    train_run(run, text, tmp_path / "run", CPU)
    first = float((tmp_path / "run" / "curve.csv").read_text().splitlines()[1].split(",")[1])
    loss = (first - EMA_DECAY * EMA_START * text.vocab.bytes_per_token) / (1 - EMA_DECAY)
    assert loss == pytest.approx(math.log(VOCAB), abs=0.5)  # an untrained model's first loss: about uniform
