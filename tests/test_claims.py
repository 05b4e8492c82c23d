"""Claiming runs through file locks with real processes (rnnsweep.claims) and atomic writes (rnnsweep.fsutil)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import Timeout

from conftest import run_worker_processes, start_lease_holder
from rnnsweep import provenance
from rnnsweep.claims import Worker, make_lock
from rnnsweep.results import read_result, settle_result
from rnnsweep.data import SPLITS, load_split
from rnnsweep.fsutil import atomic_open
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.layout import RESULT_FIELDS, lock_path, run_dir

TINY = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-3, eval_bytes=16)
OK_LINE = re.compile(r"worker (\d+): (\S+) ok\b")
FINISHED_LINE = re.compile(r"worker (\d+): stage finished, (\d+) runs trained here")

HOLDER = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(300)
"""


def _stage(tmp_path: Path, n_runs: int) -> tuple[Path, list]:
    designs = stage1_designs([1, 2, 3], [4])[:: 288 // n_runs][:n_runs]
    runs = make_runs(designs, TINY)
    stage_dir = tmp_path / "results" / "stage1"
    write_manifest(stage_dir / "manifest.csv", runs)
    return stage_dir, runs


def _result_files(stage_dir: Path, run_id: str) -> list[str]:
    return sorted(p.name for p in run_dir(stage_dir, run_id).glob("result.json*"))


# --------------------------------------------------------------------------- several real processes


def test_four_worker_processes_train_each_run_exactly_once(tmp_path, data_dir):
    stage_dir, runs = _stage(tmp_path, 24)
    assert len(runs) == 24
    codes, texts = run_worker_processes(stage_dir, data_dir, 4, tmp_path)
    assert codes == [0, 0, 0, 0], "\n".join(texts)

    trained = []  # (worker, id) for every "ok" line
    for i, text in enumerate(texts):
        for worker, run_id in OK_LINE.findall(text):
            assert int(worker) == i
            trained.append(run_id)
    assert len(trained) == len(runs), "some run was trained twice or not at all"
    assert sorted(trained) == sorted(r.id for r in runs)

    finished = [FINISHED_LINE.search(t) for t in texts]
    assert all(finished)
    assert sum(int(m.group(2)) for m in finished) == len(runs)

    for run in runs:
        assert _result_files(stage_dir, run.id) == ["result.json"]
        record = read_result(stage_dir, run.id)
        assert record["status"] == "ok" and record["id"] == run.id and record["steps"] == run.steps


# --------------------------------------------------------------------------- a lock held elsewhere


def test_lock_held_by_live_process_is_skipped_until_holder_dies(tmp_path, data_dir, one_thread):
    stage_dir, runs = _stage(tmp_path, 2)
    held, free = runs[0], runs[1]
    lock_path = stage_dir / "locks" / f"{held.id}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE, text=True)
    outcome: dict = {}

    def work() -> None:
        try:
            worker = Worker(stage_dir, data_dir, device="cpu", poll_s=0.05, progress_s=1e9)
            outcome["trained"] = worker.run()
        except BaseException as err:  # reported by the main thread
            outcome["error"] = err

    try:
        assert holder.stdout.readline().strip() == "locked"
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while read_result(stage_dir, free.id) is None and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
        assert read_result(stage_dir, free.id) is not None, outcome
        time.sleep(0.5)  # many poll periods: the worker must keep waiting, not claim or give up
        assert thread.is_alive(), outcome
        assert read_result(stage_dir, held.id) is None
        assert not run_dir(stage_dir, held.id).exists()
    finally:
        holder.kill()
        holder.wait()
    thread.join(timeout=60)
    assert not thread.is_alive(), "worker did not claim the run after its holder died"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["trained"] == 2
    assert read_result(stage_dir, held.id)["status"] == "ok"


# --------------------------------------------------------------------------- finished and damaged results


def _first_take_s(lock, give_up_s: float) -> float | None:
    """Seconds from the first try until `lock` is taken (tried every 50 ms), or None after `give_up_s`."""
    start = time.monotonic()
    while time.monotonic() - start < give_up_s:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            time.sleep(0.05)
            continue
        lock.release()
        return time.monotonic() - start
    return None


@pytest.mark.parametrize("where", ["this host", "another host"])
def test_soft_lease_of_a_dead_holder_is_taken_over(tmp_path, where):
    """The README's promise for `lock: soft`: a holder killed here is taken over at once (its pid is probed dead);
    one dead on another machine, whose pid nobody here can probe, only once its lease went unrefreshed for
    `lock_lease_s` as watched by the taker, and not before."""
    lease_s = 2.0
    stage_dir = tmp_path / "stage1"
    holder = start_lease_holder(lock_path(stage_dir, "run0"), lease_s, "node-elsewhere" if where == "another host" else None)
    holder.kill()
    holder.wait()
    taken_s = _first_take_s(make_lock(stage_dir, "run0", "soft", lease_s), give_up_s=4 * lease_s)
    assert taken_s is not None, "a dead holder's lease was never taken over"
    if where == "this host":
        assert taken_s < lease_s / 2
    else:
        assert taken_s >= lease_s


def test_soft_lease_of_a_live_holder_on_another_host_is_kept(tmp_path):
    """Its heartbeat keeps refreshing the lease, so a taker watching for 2.5 leases never gets it."""
    lease_s = 1.0
    stage_dir = tmp_path / "stage1"
    holder = start_lease_holder(lock_path(stage_dir, "run0"), lease_s, "node-elsewhere")
    try:
        assert _first_take_s(make_lock(stage_dir, "run0", "soft", lease_s), give_up_s=2.5 * lease_s) is None
    finally:
        holder.kill()
        holder.wait()


def test_finished_run_never_claimed_damaged_one_retrained(tmp_path, data_dir, one_thread):
    stage_dir, runs = _stage(tmp_path, 3)
    done, damaged, fresh = runs
    done_path = run_dir(stage_dir, done.id) / "result.json"
    done_path.parent.mkdir(parents=True)
    fingerprint = provenance.fingerprint(done, provenance.data_id(*(load_split(data_dir, split) for split in SPLITS)))
    sentinel = _record(done.id, min_loss=123.0, steps=done.steps, fingerprint=fingerprint, sentinel=True)
    done_path.write_text(json.dumps(sentinel))
    (done_path.parent / "curve.csv").write_text("step,ema_loss\n5,123.0\n")
    before = done_path.read_bytes()
    damaged_path = run_dir(stage_dir, damaged.id) / "result.json"
    damaged_path.parent.mkdir(parents=True)
    damaged_path.write_text('{"id": "x", "status": "o')

    trained = Worker(stage_dir, data_dir, device="cpu", poll_s=0.05, progress_s=1e9).run()

    assert trained == 2
    assert done_path.read_bytes() == before
    assert sorted(p.name for p in done_path.parent.iterdir()) == ["curve.csv", "result.json"]
    assert read_result(stage_dir, damaged.id)["status"] == "ok"
    assert len([n for n in _result_files(stage_dir, damaged.id) if n.startswith("result.json.corrupt-")]) == 1
    assert read_result(stage_dir, fresh.id)["status"] == "ok"


@pytest.mark.parametrize(
    "content",
    ['{"id": "abc", "status": "ok", "min_lo', "", "[1, 2]", '{"id": "abc", "status": "running"}'],
    ids=["truncated", "empty", "not-a-dict", "bad-status"],
)
def test_damaged_result_is_treated_as_missing_and_moved_aside(tmp_path, content):
    stage_dir = tmp_path / "stage1"
    path = run_dir(stage_dir, "abc") / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert read_result(stage_dir, "abc") is None
    assert path.read_text() == content  # a reader without the lock moves nothing
    assert settle_result(stage_dir, "abc", "f" * 16) is None  # the lock holder does
    assert not path.exists()
    aside = list(path.parent.glob("result.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_text() == content
    assert settle_result(stage_dir, "abc", "f" * 16) is None  # still missing, nothing else moved
    assert len(list(path.parent.glob("result.json.corrupt-*"))) == 1


def _record(run_id: str, **changes) -> dict:
    """A complete result record of the right types."""
    texts = {"id": run_id, "status": "ok", "device": "cpu", "precision": "fp32", "engine": "design", "fingerprint": "f" * 16, "data": "d" * 16}
    return {k: 0 for k in RESULT_FIELDS} | {"min_loss": 2.5, "valid_bpb": 3.5, "final_loss": float("nan")} | texts | changes


def test_read_result_valid_and_missing(tmp_path):
    stage_dir = tmp_path / "stage1"
    assert read_result(stage_dir, "nothing") is None
    record = _record("abc", status="diverged")
    path = run_dir(stage_dir, "abc") / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    assert read_result(stage_dir, "abc") is None  # no curve yet: not a usable result
    (path.parent / "curve.csv").write_text("step,ema_loss\n5,2.5\n")
    assert read_result(stage_dir, "abc") == record | {"final_loss": read_result(stage_dir, "abc")["final_loss"]}
    assert read_result(stage_dir, "abc", fingerprint="f" * 16)["status"] == "diverged"
    assert read_result(stage_dir, "abc", fingerprint="e" * 16) is None  # finished, but under other settings
    assert path.exists()  # left for settle_result, which holds the run's lock


@pytest.mark.parametrize(
    "field, value",
    [("min_loss", "oops"), ("params", 1.5), ("steps", True), ("fingerprint", 7), ("fingerprint", "../../../../x"), ("data", "/tmp/x")],
)
def test_a_result_field_of_the_wrong_type_is_damage(tmp_path, field, value):
    stage_dir = tmp_path / "stage1"
    path = run_dir(stage_dir, "abc") / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_record("abc", **{field: value})))
    (path.parent / "curve.csv").write_text("step,ema_loss\n5,2.5\n")
    assert read_result(stage_dir, "abc") is None
    assert settle_result(stage_dir, "abc", "f" * 16) is None
    assert list(path.parent.glob("result.json.corrupt-*"))


def test_settle_result_sets_other_settings_aside_and_restores_them(tmp_path):
    """Under the run's lock: another fingerprint's files move to superseded/<fp>/, and come back when wanted."""
    stage_dir = tmp_path / "stage1"
    folder = run_dir(stage_dir, "abc")
    folder.mkdir(parents=True)
    old = _record("abc", fingerprint="a" * 16)
    (folder / "result.json").write_text(json.dumps(old))
    for name in ("weights.pt", "config.json"):
        (folder / name).write_text(f"{name} of a\n")
    (folder / "curve.csv").write_text("step,ema_loss\n5,2.5\n")
    assert settle_result(stage_dir, "abc", "b" * 16) is None
    assert not (folder / "result.json").exists() and not (folder / "curve.csv").exists()
    aside = folder / "superseded" / ("a" * 16)
    assert sorted(p.name for p in aside.iterdir()) == ["config.json", "curve.csv", "result.json", "weights.pt"]
    back = settle_result(stage_dir, "abc", "a" * 16)
    assert back["fingerprint"] == "a" * 16
    assert (folder / "weights.pt").read_text() == "weights.pt of a\n"
    assert not any(aside.iterdir())


# --------------------------------------------------------------------------- atomic writes


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_atomic_open_success_replaces_content(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    with atomic_open(path) as fh:
        fh.write("new content")
        assert path.read_text() == "old"  # readers see the old file until the end
    assert path.read_text() == "new content"
    assert _leftovers(tmp_path, {"file.txt"}) == []


def test_atomic_open_exception_keeps_old_content(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path) as fh:
            fh.write("half of the new")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path, {"file.txt"}) == []


def test_atomic_open_exception_on_new_file_leaves_nothing(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "wb") as fh:
            fh.write(b"\x00\x01")
            raise KeyboardInterrupt
    assert not path.exists()
    assert _leftovers(path.parent, set()) == []
    with atomic_open(path, "wb") as fh:
        fh.write(b"\x00\x01\x02")
    assert path.read_bytes() == b"\x00\x01\x02"
    assert _leftovers(path.parent, {"file.bin"}) == []


def test_atomic_files_get_umask_permissions_not_0600(tmp_path):
    """Results on a shared cluster folder must be as readable as any file the user writes."""
    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "summary.csv") as handle:
            handle.write("id\n")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.csv").stat().st_mode & 0o777 == 0o644
