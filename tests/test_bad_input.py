"""Bad input from the user's side: each is refused with one line naming the problem and the file, or repaired.

User errors (unknown stage, a hand-broken manifest, an unusable corpus, a bad
profile) must end the command with exit code 2 and a single line
`rnnsweep <cmd>: error: ...` naming the file, with no traceback, and must
leave every existing file as it was. Damaged run files (result.json,
checkpoint.pt) are not user errors: the worker moves them aside, says so, and
trains the run again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import worker_args
from rnnsweep import cli
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.layout import CHECKPOINT, CURVE, RESULT, run_dir
from rnnsweep.tokens import Text

TINY = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-3, eval_bytes=16)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, bytes and mtime: equal snapshots mean nothing was touched."""
    if not root.exists():
        return {}
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        content = path.read_bytes() if path.is_file() else None
        state[str(path.relative_to(root))] = (path.is_dir(), content, st.st_mtime_ns, st.st_ino)
    return state


def error_line(stderr: str, command: str) -> str:
    """The single error line of a failed command; fails if there is a traceback or the message spans lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("rnnsweep") and "error:" in line]
    assert len(lines) == 1, f"expected exactly one error line:\n{stderr}"
    line = lines[0]
    assert line.startswith(f"rnnsweep {command}: error: "), line
    tail = stderr[stderr.index(line):]
    assert tail.rstrip("\n") == line, f"the error message continues past its line:\n{tail}"
    return line


def run_module(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m rnnsweep ARGS` as a user would type it."""
    cmd = [sys.executable, "-m", "rnnsweep", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.fixture
def call(capsys):
    """Run `rnnsweep.cli.main(argv)` in this process; return (exit code, stderr).

    The worker command installs signal handlers and sets torch's thread count:
    both are put back afterwards so later tests see this process unchanged.
    An exception escaping main() is what a user would see as a traceback: it fails the test.
    """
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    root = logging.getLogger()
    root_handlers = list(root.handlers)

    def invoke(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as err:  # argparse and signal exits
            code = err.code
        except BaseException:
            pytest.fail(f"rnnsweep {' '.join(argv)} raised instead of reporting an error:\n{traceback.format_exc()}")
        return code, capsys.readouterr().err

    yield invoke
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    torch.set_num_threads(threads)
    root.handlers[:] = root_handlers


def warnings_naming(caplog, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and str(path) in r.getMessage()]


def _small_stage(results: Path, n_runs: int, **settings) -> list:
    designs = stage1_designs([1, 2], [4])[:: 192 // n_runs][:n_runs]
    runs = make_runs(designs, {**TINY, **settings})
    write_manifest(results / "stage1" / "manifest.csv", runs)
    return runs


def _stage_args(command: str, results: Path, data_dir: Path, stage: str = "stage1", **overrides: object) -> list[str]:
    """`worker` or `aggregate` on a stage of `results`, with the tests' training options."""
    args = worker_args(results / stage, data_dir, **overrides)
    return [command, *args[1:]]


# --------------------------------------------------------------------------- a stage without a manifest


def test_missing_manifest_worker_subprocess(tmp_path, data_dir):
    done = run_module(*_stage_args("worker", tmp_path / "results", data_dir, stage="stage4"))
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr, "worker")
    assert str(tmp_path / "results" / "stage4" / "manifest.csv") in line and "not found" in line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["worker", "aggregate"])
def test_missing_manifest_touches_nothing(tmp_path, data_dir, call, command):
    results = tmp_path / "results"
    _small_stage(results, 2)
    before = snapshot(tmp_path)
    code, err = call(*_stage_args(command, results, data_dir, stage="stage4"))
    assert code == 2
    assert "stage4" in error_line(err, command)
    assert snapshot(tmp_path) == before
    assert not (results / "stage4").exists()


# --------------------------------------------------------------------------- hand-broken manifests


def _rows(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _binary(text: str) -> bytes:
    return text[:300].encode() + random.Random(0).randbytes(3000)


def _nul_filled(text: str) -> bytes:  # what a crash can leave of a file whose blocks were never written
    return b"\0" * len(text.encode())


def _nul_filled_large(text: str) -> bytes:  # the same for a larger manifest: one "field" over csv's limit
    return b"\0" * 200_000


def _non_boolean_switch(text: str) -> bytes:
    rows = _rows(text)
    header = rows[0].rstrip("\n").split(",")
    cells = rows[2].rstrip("\n").split(",")
    cells[header.index("use_forget_gate")] = "yes"
    rows[2] = ",".join(cells) + "\n"
    return "".join(rows).encode()


def _truncated_row(text: str) -> bytes:
    return text.rstrip("\n")[:-12].encode()  # the last row cut inside its training settings


def _truncated_midway(text: str) -> bytes:
    rows = _rows(text)
    return "".join(rows[:4] + [rows[4][: len(rows[4]) // 2]]).encode()  # cut inside a row


def _duplicate_id(text: str) -> bytes:
    rows = _rows(text)
    return "".join(rows + [rows[1]]).encode()


def _extra_field(text: str) -> bytes:
    rows = _rows(text)
    rows[1] = rows[1].rstrip("\n") + ",surplus\n"
    return "".join(rows).encode()


def _unclosed_quote(text: str) -> bytes:
    rows = _rows(text)
    rows[2] = '"' + rows[2]
    return "".join(rows).encode()


def _design_changed(text: str) -> bytes:
    rows = _rows(text)
    header = rows[0].rstrip("\n").split(",")
    cells = rows[1].rstrip("\n").split(",")
    cells[header.index("n_layers")] = str(int(cells[header.index("n_layers")]) + 5)
    rows[1] = ",".join(cells) + "\n"
    return "".join(rows).encode()


def _renamed_column(text: str) -> bytes:
    rows = _rows(text)
    rows[0] = rows[0].replace(",lr,", ",learning_rate,")
    return "".join(rows).encode()


def _empty(text: str) -> bytes:
    return b""


def _id_as(new_id: str):
    """A manifest whose first run id was edited into a path (absolute, or climbing out of the stage)."""

    def mutate(text: str) -> bytes:
        rows = _rows(text)
        cells = rows[1].rstrip("\n").split(",")
        cells[0] = new_id
        rows[1] = ",".join(cells) + "\n"
        return "".join(rows).encode()

    return mutate


BROKEN = {
    "binary": (_binary, "not a text"),
    "nul-filled": (_nul_filled, "missing columns"),
    "nul-filled-large": (_nul_filled_large, ""),
    "non-boolean-switch": (_non_boolean_switch, "'yes'"),
    "truncated-row": (_truncated_row, "line"),
    "truncated-midway": (_truncated_midway, "line"),
    "duplicate-id": (_duplicate_id, "duplicate id"),
    "extra-field": (_extra_field, "more fields"),
    "unclosed-quote": (_unclosed_quote, "line"),
    "design-changed": (_design_changed, "does not match"),
    "renamed-column": (_renamed_column, "lr"),
    "empty": (_empty, "missing columns"),
    "absolute-id": (_id_as("/tmp/rnnsweep-escape"), "is not"),
    "climbing-id": (_id_as("../../../../tmp/rnnsweep-escape"), "is not"),
}


@pytest.fixture
def broken_stage(tmp_path, request):
    """A stage whose manifest was broken by hand, plus an older summary that must survive."""
    results = tmp_path / "results"
    runs = _small_stage(results, 8)
    stage = results / "stage1"
    manifest = stage / "manifest.csv"
    mutate, expected = BROKEN[request.param]
    manifest.write_bytes(mutate(manifest.read_text()))
    (stage / "summary.csv").write_text("id,min_loss\nold,1.0\n")
    (stage / "curves.csv").write_text("id,step,ema_loss\nold,5,1.0\n")
    return results, manifest, expected, runs


@pytest.mark.parametrize("broken_stage", list(BROKEN), indirect=True)
@pytest.mark.parametrize("command", ["worker", "aggregate"])
def test_broken_manifest_is_refused_and_nothing_written(broken_stage, command, call, data_dir, tmp_path):
    results, manifest, expected, runs = broken_stage
    before = snapshot(tmp_path)
    code, err = call(*_stage_args(command, results, data_dir))
    assert code == 2, err
    line = error_line(err, command)
    assert str(manifest) in line
    assert expected in line
    assert snapshot(tmp_path) == before  # manifest, old summary and curves untouched
    assert not (results / "stage1" / "runs").exists()
    assert not (results / "stage1" / "locks").exists()


@pytest.mark.parametrize("broken_stage", ["duplicate-id"], indirect=True)
def test_broken_manifest_subprocess(broken_stage, tmp_path, data_dir):
    results, manifest, expected, _ = broken_stage
    before = snapshot(tmp_path)
    done = run_module(*_stage_args("aggregate", results, data_dir))
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr, "aggregate")
    assert str(manifest) in line and expected in line
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- damaged result records


@pytest.fixture(scope="module")
def finished_stage(tmp_path_factory, data_dir) -> Path:
    """Three tiny runs trained by a worker, copied by each test that damages them."""
    from rnnsweep.claims import Worker

    results = tmp_path_factory.mktemp("finished") / "results"
    _small_stage(results, 3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker command with --threads 1, so a retrained run is bit-identical
    try:
        assert Worker(results / "stage1", data_dir, device="cpu", progress_s=1e9).run() == 3
    finally:
        torch.set_num_threads(before)
    return results


def _finished(tmp_path: Path, finished_stage: Path) -> Path:
    """A copy of the finished stage for one test to damage."""
    results = tmp_path / "results"
    shutil.copytree(finished_stage, results)
    return results


def _damaged_records(original: bytes, run_id: str) -> dict[str, bytes]:
    return {
        "truncated": original[: len(original) // 2],
        "empty": b"",
        "nul-filled": b"\0" * len(original),
        "binary": random.Random(1).randbytes(len(original)),
        "not-a-dict": b"[1, 2, 3]\n",
        "fields-lost": json.dumps({"id": run_id, "status": "ok"}).encode(),
    }


@pytest.mark.parametrize("damage", ["truncated", "empty", "nul-filled", "binary", "not-a-dict", "fields-lost"])
def test_damaged_result_is_retrained_and_aggregate_succeeds(finished_stage, damage, tmp_path, data_dir, call, caplog):
    results = _finished(tmp_path, finished_stage)
    stage = results / "stage1"
    ids = pd.read_csv(stage / "manifest.csv")["id"].tolist()
    victim = ids[1]
    path = run_dir(stage, victim) / RESULT
    original = json.loads(path.read_text())
    original_curve = (path.parent / "curve.csv").read_bytes()
    broken = _damaged_records(path.read_bytes(), victim)[damage]
    path.write_bytes(broken)
    others = {i: snapshot(run_dir(stage, i)) for i in ids if i != victim}

    with caplog.at_level(logging.INFO):
        code, err = call(*_stage_args("worker", results, data_dir))
    assert code == 0, err
    aside = sorted(path.parent.glob(f"{RESULT}.corrupt-*"))
    assert len(aside) == 1, "the damaged record was not moved aside"
    assert aside[0].read_bytes() == broken  # kept as it was, for inspection
    assert warnings_naming(caplog, path), "no warning names the damaged file"
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["steps"] == TINY["steps"]
    assert record["min_loss"] == original["min_loss"]  # retrained: same seed, same result
    assert (path.parent / "curve.csv").read_bytes() == original_curve
    for run_id, before in others.items():  # the intact runs were not retrained
        assert snapshot(run_dir(stage, run_id)) == before, run_id

    code, err = call(*_stage_args("aggregate", results, data_dir))
    assert code == 0, err
    summary = pd.read_csv(stage / "summary.csv")
    assert summary["id"].tolist() == ids
    assert summary.set_index("id").loc[victim, "min_loss"] == pytest.approx(original["min_loss"], rel=1e-12)


# --------------------------------------------------------------------------- damaged checkpoints


def _interrupted_run(results: Path, splits) -> tuple:
    """One run stopped at step 20 of 40, with a real checkpoint of that step on disk."""
    import threading

    from rnnsweep.train import Interrupted, train_run

    (run,) = _small_stage(results, 1, steps=40)
    target = run_dir(results / "stage1", run.id)
    stop = threading.Event()

    def report(step, ema, rate):
        if step >= 20:
            stop.set()

    with pytest.raises(Interrupted):
        train_run(run, Text.of_bytes(*splits), target, torch.device("cpu"), checkpoint_every=10, report=report, stop=stop)
    assert (target / CHECKPOINT).exists()
    return run, target


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_set_aside_and_run_restarts(tmp_path, splits, data_dir, call, caplog, one_thread, damage):
    from rnnsweep.train import train_run

    results = tmp_path / "results"
    run, target = _interrupted_run(results, splits)
    checkpoint = target / CHECKPOINT
    good = checkpoint.read_bytes()
    broken = {"truncated": good[: len(good) // 2], "empty": b"", "garbage": random.Random(2).randbytes(len(good))}[damage]
    checkpoint.write_bytes(broken)
    reference = train_run(run, Text.of_bytes(*splits), tmp_path / "reference", torch.device("cpu"))  # from step 0, no checkpoint

    with caplog.at_level(logging.INFO):
        code, err = call(*_stage_args("worker", results, data_dir, checkpoint_every=10))
    assert code == 0, err
    aside = sorted(target.glob(f"{CHECKPOINT}.corrupt-*"))
    assert len(aside) == 1, "the damaged checkpoint was not moved aside"
    assert aside[0].read_bytes() == broken
    assert warnings_naming(caplog, checkpoint), "no warning names the damaged checkpoint"
    assert not any("resuming" in r.getMessage() for r in caplog.records)
    assert not checkpoint.exists()  # a finished run keeps no checkpoint
    record = json.loads((target / RESULT).read_text())
    assert record["status"] == "ok" and record["steps"] == 40
    # Restarted from step 0: exactly the run trained without any checkpoint.
    assert (target / "curve.csv").read_bytes() == (tmp_path / "reference" / "curve.csv").read_bytes()
    for key in ("min_loss", "final_loss", "valid_bpb"):
        assert record[key] == reference[key], key


# --------------------------------------------------------------------------- unusable corpus files


def _corpus(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"corpus-{kind}.txt"
    if kind == "empty":
        path.touch()
    elif kind == "short":
        path.write_bytes(b"abcdefghij" * 30)  # 300 bytes: valid/test get 15 bytes, less than a window of 16
    elif kind == "directory":
        path.mkdir()
    return path  # "missing": never created


def _prepared_splits(tmp_path: Path, call) -> tuple[Path, Path]:
    """Splits of an earlier, good corpus in tmp_path/data: a failed `data` must leave them as they are."""
    good = tmp_path / "good.txt"
    good.write_bytes(bytes(range(256)) * 20)
    out, cache = tmp_path / "data", tmp_path / "cache"
    code, err = call("data", "--corpus", str(good), "--out", str(out), "--cache-dir", str(cache), "--min-bytes", "16")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["corpus.json", "test.bin", "train.bin", "valid.bin"]
    return out, cache


@pytest.mark.parametrize("kind", ["missing", "empty", "short", "directory"])
def test_unusable_corpus_is_refused_and_splits_untouched(tmp_path, kind, call):
    corpus = _corpus(tmp_path, kind)
    out, cache = _prepared_splits(tmp_path, call)
    before = snapshot(tmp_path)
    for target in (out, tmp_path / "fresh"):
        code, err = call("data", "--corpus", str(corpus), "--out", str(target), "--cache-dir", str(cache), "--min-bytes", "16")
        assert code == 2, err
        assert str(corpus.resolve()) in error_line(err, "data")
        assert snapshot(tmp_path) == before  # earlier splits survive; no new folder, no split files


def test_short_corpus_subprocess(tmp_path, call):
    corpus = _corpus(tmp_path, "short")
    out, cache = _prepared_splits(tmp_path, call)
    before = snapshot(tmp_path)
    done = run_module("data", "--corpus", str(corpus), "--out", str(out), "--cache-dir", str(cache), "--min-bytes", "16")
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr, "data")
    assert str(corpus.resolve()) in line and "too short" in line
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- bad profiles through Snakemake


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, copy_checkout) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


BAD_PROFILES = {
    "wrong-type": ({"stage1": {"batch_size": "eight"}}, "stage1.batch_size"),
    "out-of-range": ({"stage2": {"keep_fraction": 1.5}}, "stage2.keep_fraction"),
    "unknown-key": ({"stage3": {"replicate": 3}}, "replicate"),
    "empty-axis": ({"stage1": {"lr": []}}, "stage1.lr"),
    "not-an-axis": ({"stage1": {"log_every": [5, 10]}}, "stage1.log_every"),
    "axes-over-the-cap": ({"stage1": {"lr": [0.001, 0.002, 0.003]}, "max_stage_runs": 1000}, "stage1.lr"),
    "corpus-not-a-file": ({"corpus": ["generated", "no/such/book.txt"]}, "corpus: no/such/book.txt is not a file"),
    "corpora-alike": ({"corpus": ["configs/smoke.yaml", "configs/../configs/smoke.yaml"]}, "would both be called 'smoke'"),
    "corpus-empty-list": ({"corpus": []}, "corpus"),
}


def test_bad_profiles_stop_snakemake(checkout):
    """Each kind of mistake in its own profile, refused before any job with exit status 1; the runs overlap to save time."""
    procs = {}
    for name, (profile, _) in BAD_PROFILES.items():
        bad = checkout / f"bad-{name}.yaml"
        bad.write_text(yaml.safe_dump(profile))
        cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", bad.name]
        procs[name] = subprocess.Popen(cmd, cwd=checkout, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {name: (proc.communicate(timeout=300)[0], proc.returncode) for name, proc in procs.items()}
    for name, (output, code) in outputs.items():
        key = BAD_PROFILES[name][1]
        assert code == 1, f"{name}: snakemake accepted the profile\n{output[-2000:]}"
        assert key in output, f"{name}: the output does not name {key}\n{output[-2000:]}"
    assert not (checkout / "results").exists()
    assert not (checkout / "logs").exists()


# --------------------------------------------------------------------------- writes stay inside the results folder


@pytest.mark.parametrize("link", ["attempts.jsonl", "run folder"])
def test_a_symbolic_link_inside_results_is_not_written_through(tmp_path, data_dir, call, link):
    results = tmp_path / "results"
    (run,) = _small_stage(results, 1)
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = run_dir(results / "stage1", run.id)
    if link == "run folder":
        folder.parent.mkdir(parents=True)
        folder.symlink_to(outside, target_is_directory=True)
    else:
        folder.mkdir(parents=True)
        (folder / "attempts.jsonl").symlink_to(outside / "log")
    code, err = call(*_stage_args("worker", results, data_dir))
    assert code == 2
    assert "symbolic link" in error_line(err, "worker")
    assert not any(outside.iterdir()), "a worker wrote outside the results folder"


# --------------------------------------------------------------------------- one line, exit 2, nothing overwritten


def test_select_on_a_summary_without_status_or_rows(tmp_path, finished_stage, data_dir, call):
    results = _finished(tmp_path, finished_stage)
    assert call(*_stage_args("aggregate", results, data_dir))[0] == 0
    summary = results / "stage1" / "summary.csv"
    good = pd.read_csv(summary)
    argv = ["select", "--stage", "stage2", "--summary", str(summary), "--out", str(results / "stage2" / "manifest.csv"),
            "--keep-fraction", "0.5", "--wide-state-size", "8", "--deep-layers", "3", "--deep-state-sizes", "8",
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()],
            "--precision", "fp32", "--batch-designs", "off", "--device", "cpu", "--seed", "0", "--tokenizer", "bytes"]
    for broken, expected in ((good.drop(columns="status"), "status"), (good.head(0), "no rows")):
        broken.to_csv(summary, index=False)
        before = snapshot(tmp_path)
        code, err = call(*argv)
        assert code == 2 and expected in error_line(err, "select")
        assert snapshot(tmp_path) == before
    summary.write_text("")
    code, err = call(*argv)
    assert code == 2 and "empty" in error_line(err, "select")


@pytest.mark.parametrize("damage", ["empty curve", "folder as result"])
def test_aggregate_heals_a_damaged_run_of_a_finished_stage(tmp_path, finished_stage, data_dir, call, damage):
    """Damage that once gave a traceback: the run is set aside, trained again by aggregate itself, and aggregated."""
    results = _finished(tmp_path, finished_stage)
    stage = results / "stage1"
    victim = pd.read_csv(stage / "manifest.csv")["id"].tolist()[0]
    original = json.loads((run_dir(stage, victim) / RESULT).read_text())
    if damage == "empty curve":
        (run_dir(stage, victim) / CURVE).write_text("")
    else:
        (run_dir(stage, victim) / RESULT).unlink()
        (run_dir(stage, victim) / RESULT).mkdir()
    code, err = call(*_stage_args("aggregate", results, data_dir))
    assert code == 0, err
    summary = pd.read_csv(stage / "summary.csv").set_index("id")
    assert summary.loc[victim, "min_loss"] == pytest.approx(original["min_loss"], rel=1e-12)


def test_plot_of_an_unknown_figure(tmp_path, call):
    code, err = call("plot", "no_such_figure", "--summary", str(tmp_path / "summary.csv"), "--curves", str(tmp_path / "curves.csv"),
                     "--out", str(tmp_path / "x.png"), "--threshold", "1.9", "--best-curves", "5", "--smooth", "10")
    assert code == 2 and "no_such_figure" in error_line(err, "plot")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("flag", [("--threads-per-worker", "0"), ("--count", "0"), ("--index", "3")])
def test_worker_with_impossible_numbers(tmp_path, data_dir, call, flag):
    results = tmp_path / "results"
    _small_stage(results, 1)
    before = snapshot(tmp_path)
    code, err = call(*_stage_args("worker", results, data_dir), *flag)
    assert code == 2 and flag[0] in error_line(err, "worker")
    assert snapshot(tmp_path) == before


def test_training_split_shorter_than_one_window(tmp_path, data_dir, call):
    results = tmp_path / "results"
    _small_stage(results, 1, history_size=30_000)
    code, err = call(*_stage_args("worker", results, data_dir))
    assert code == 2 and "fewer than one window" in error_line(err, "worker")


def test_a_ten_byte_corpus_is_refused(tmp_path, call):
    corpus = tmp_path / "tiny.txt"
    corpus.write_bytes(b"0123456789")
    code, err = call("data", "--corpus", str(corpus), "--out", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and "too short" in error_line(err, "data")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=["disk-full", "read-only", "denied"])
def test_the_machine_refusing_a_write_is_one_line(tmp_path, data_dir, call, monkeypatch, error):
    """A full disk, a read-only or forbidden results folder (simulated: the tests run as root, which no mode stops)."""
    import rnnsweep.fsutil

    results = tmp_path / "results"
    _small_stage(results, 1)

    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error), str(results / "stage1"))

    monkeypatch.setattr(rnnsweep.fsutil.os, "replace", refuse)
    code, err = call(*_stage_args("worker", results, data_dir))
    assert code == 2 and os.strerror(error) in error_line(err, "worker")


def test_unreadable_corpus_is_one_line(tmp_path, call, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(bytes(range(256)) * 100)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("rnnsweep.data.np.memmap", refuse)
    code, err = call("data", "--corpus", str(corpus), "--out", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and str(corpus) in error_line(err, "data")
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- baselines


def _baselines_table(tmp_path: Path, data_dir: Path, call) -> Path:
    table = tmp_path / "baselines.csv"
    code, err = call("baselines", "--data", str(data_dir), "--out", str(table), "--max-order", "2",
                     "--eval-bytes", "64", "--history-size", "8")
    assert code == 0, err
    return table


def test_baselines_of_other_bytes_are_never_set_beside_the_runs(tmp_path, finished_stage, data_dir, call):
    results = _finished(tmp_path, finished_stage)
    assert call(*_stage_args("aggregate", results, data_dir))[0] == 0
    summary, curves = results / "stage1" / "summary.csv", results / "stage1" / "curves.csv"
    table = _baselines_table(tmp_path, data_dir, call)
    assert call("compare", "--baselines", str(table), "--summary", str(summary), "--out", str(tmp_path / "ok.png"))[0] == 0
    pd.read_csv(table).assign(data="0123456789abcdef").to_csv(table, index=False)
    before = snapshot(tmp_path)
    code, err = call("compare", "--baselines", str(table), "--summary", str(summary), "--out", str(tmp_path / "ok.png"))
    assert code == 2 and "0123456789abcdef" in error_line(err, "compare")
    code, err = call("plot", "swarm_all", "--summary", str(summary), "--curves", str(curves), "--out", str(tmp_path / "s.png"),
                     "--threshold", "1.9", "--best-curves", "5", "--smooth", "10", "--baselines", str(table))
    assert code == 2 and "0123456789abcdef" in error_line(err, "plot")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("text", ["", "method,bpb\nx,1\n", "not,a\n\"table"], ids=["empty", "columns", "broken"])
def test_a_broken_baselines_table_is_one_line(tmp_path, text, call):
    table = tmp_path / "baselines.csv"
    table.write_text(text)
    code, err = call("compare", "--baselines", str(table), "--summary", str(tmp_path / "s.csv"), "--out", str(tmp_path / "b.png"))
    assert code == 2 and str(table) in error_line(err, "compare")
    assert not (tmp_path / "b.png").exists()


def test_baselines_of_a_test_split_shorter_than_one_window(tmp_path, data_dir, call):
    short = tmp_path / "data"
    shutil.copytree(data_dir, short)
    (short / "test.bin").write_bytes(b"12345")
    code, err = call("baselines", "--data", str(short), "--out", str(tmp_path / "b.csv"), "--max-order", "2",
                     "--eval-bytes", "64", "--history-size", "8")
    assert code == 2 and "fewer than one window" in error_line(err, "baselines")
    assert not (tmp_path / "b.csv").exists()


# --------------------------------------------------------------------------- values out of range, one line each

OUT_OF_RANGE = [
    ("--temperature", "0"), ("--temperature", "nan"), ("--temperature", "-1"), ("--temperature", "inf"),
    ("--seed", "99999999999999999999"), ("--seed", "-1"), ("--bytes", "10000000000000"), ("--bytes", "0"),
]


@pytest.mark.parametrize("option, value", OUT_OF_RANGE, ids=[f"{o}={v}" for o, v in OUT_OF_RANGE])
def test_sample_refuses_a_value_out_of_its_range(call, tmp_path, option, value):
    """Sampling at temperature 0 or NaN, a seed PyTorch cannot take, or a day's worth of bytes: one line, exit 2."""
    settings = {"--bytes": "10", "--temperature": "1", "--seed": "1"} | {option: value}
    code, err = call("sample", "--run", str(tmp_path / "run"), *(word for pair in settings.items() for word in pair))
    assert code == 2
    line = error_line(err, "sample")
    assert f"argument {option}: " in line and "schema" in line


@pytest.mark.parametrize("device", ["tpu", "cuda:99"])
@pytest.mark.parametrize("command", ["worker", "aggregate"])
def test_a_device_this_machine_lacks_is_refused_before_anything_runs(call, tmp_path, data_dir, command, device):
    _small_stage(tmp_path / "results", 2)
    code, err = call(*_stage_args(command, tmp_path / "results", data_dir, device=device))
    assert code == 2
    line = error_line(err, command)
    assert f"'{device}'" in line and "device" in line  # a name no machine has: refused by the schema's pattern
    assert not (tmp_path / "results" / "stage1" / "runs").exists()


@pytest.mark.parametrize("command", ["worker", "aggregate"])
def test_a_manifest_file_of_another_name_is_refused_by_its_own_name(call, tmp_path, data_dir, command):
    """The stage is the manifest's folder; a copy named otherwise would have been read as that folder's manifest.csv."""
    _small_stage(tmp_path / "results", 2)
    other = tmp_path / "elsewhere" / "nope.csv"
    other.parent.mkdir()
    shutil.copy(tmp_path / "results" / "stage1" / "manifest.csv", other)
    args = _stage_args(command, tmp_path / "results", data_dir)
    args[args.index("--manifest") + 1] = str(other)
    code, err = call(*args)
    assert code == 2
    line = error_line(err, command)
    assert str(other) in line and "manifest.csv" in line
    assert sorted(p.name for p in other.parent.iterdir()) == ["nope.csv"]
