"""Claiming runs through file locks with real processes (rnnsweep.claims) and atomic writes (rnnsweep.fsutil)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CountedWaits, fake_result, run_worker_processes, start_lease_holder, wait_for, worker_in_thread
from rnnsweep import provenance
from rnnsweep.claims import RunLock, Worker
from rnnsweep.results import read_result, settle_result
from rnnsweep.data import SPLITS, load_split
from rnnsweep.fsutil import atomic_open
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.train import train_run
from rnnsweep.layout import lock_path, run_dir
from rnnsweep.plan import count_params
from rnnsweep.tokens import Text

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
        assert record["status"] == "ok" and record["id"] == run.id and record["steps"] == run.settings.steps


# --------------------------------------------------------------------------- a lock held elsewhere


def test_lock_held_by_live_process_is_skipped_until_holder_dies(tmp_path, data_dir, one_thread):
    stage_dir, runs = _stage(tmp_path, 2)
    held, free = runs[0], runs[1]
    lock_path = stage_dir / "locks" / f"{held.id}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        stop = CountedWaits()
        thread, outcome = worker_in_thread(stage_dir, data_dir, stop)
        wait_for(lambda: read_result(stage_dir, free.id) is not None or not thread.is_alive(), "the free run")
        assert read_result(stage_dir, free.id) is not None, outcome
        waited = stop.waits
        # Ten poll periods with only the held run left: the worker must keep waiting, not claim or give up.
        wait_for(lambda: stop.waits >= waited + 10 or not thread.is_alive(), "ten polls")
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


def _attempts(stage_dir: Path, run_id: str) -> list[dict]:
    path = run_dir(stage_dir, run_id) / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_holder_whose_lock_file_is_deleted_checkpoints_and_claims_again(tmp_path, data_dir, one_thread, caplog):
    """Deleting the lock file under a training worker: it stops training through the lost lock, and the
    run finishes exactly as if nothing had happened, from the checkpoint taken when it noticed."""
    run = make_runs(stage1_designs([1], [4])[3:4], {**TINY, "steps": 3000, "log_every": 20})[0]
    stage_dir = tmp_path / "results" / "stage1"
    write_manifest(stage_dir / "manifest.csv", [run])
    thread, outcome = worker_in_thread(stage_dir, data_dir)
    wait_for(lambda: _attempts(stage_dir, run.id), "the worker to claim the run")
    lock_path(stage_dir, run.id).unlink()
    thread.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["trained"] == 1
    assert "lock file of " + run.id + " was removed or replaced" in caplog.text
    starts = [a["start_step"] for a in _attempts(stage_dir, run.id)]
    assert len(starts) == 2 and starts[0] == 0 < starts[1] < run.settings.steps  # resumed, not started again
    alone = tmp_path / "alone"
    train_run(run, Text.of_bytes(*(load_split(data_dir, split) for split in SPLITS)), alone, torch.device("cpu"))
    assert (run_dir(stage_dir, run.id) / "curve.csv").read_bytes() == (alone / "curve.csv").read_bytes()


def test_a_run_another_live_worker_trains_is_not_trained_even_with_its_lock_free(tmp_path, data_dir, one_thread, caplog):
    """The claimant's side: a lock it could take because the file was deleted is no licence to train the run
    that a live worker's heartbeat says it trains; once that worker is gone, the run is trained."""
    stage_dir, runs = _stage(tmp_path, 2)
    busy, free = runs
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        beat = {"host": socket.gethostname(), "pid": other.pid, "runs": [busy.id], "updated": time.time()}
        (stage_dir / "progress").mkdir()
        (stage_dir / "progress" / f"{socket.gethostname()}-{other.pid}.json").write_text(json.dumps(beat))
        thread, outcome = worker_in_thread(stage_dir, data_dir)
        wait_for(lambda: "not training it twice" in caplog.text and read_result(stage_dir, free.id), "the worker to skip the run")
        assert thread.is_alive() and not _attempts(stage_dir, busy.id)
    finally:
        other.kill()
        other.wait()
    thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["trained"] == 2 and read_result(stage_dir, busy.id)["status"] == "ok"


# --------------------------------------------------------------------------- finished and damaged results


def _first_take_s(lock, give_up_s: float) -> float | None:
    """Seconds from the first try until `lock` is taken (tried every 50 ms), or None after `give_up_s`."""
    start = time.monotonic()
    while time.monotonic() - start < give_up_s:
        if not lock.acquire():
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
    taken_s = _first_take_s(RunLock(stage_dir, "run0", "soft", lease_s), give_up_s=4 * lease_s)
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
        assert _first_take_s(RunLock(stage_dir, "run0", "soft", lease_s), give_up_s=2.5 * lease_s) is None
    finally:
        holder.kill()
        holder.wait()


def test_finished_run_never_claimed_damaged_one_retrained(tmp_path, data_dir, one_thread):
    stage_dir, runs = _stage(tmp_path, 3)
    done, damaged, fresh = runs
    done_path = run_dir(stage_dir, done.id) / "result.json"
    fingerprint = provenance.fingerprint(done, provenance.data_id(*(load_split(data_dir, split) for split in SPLITS)))
    fake_result(done_path.parent, done.id, done.settings.steps, done.settings.log_every, fingerprint=fingerprint, sentinel=True,
                seed=done.seed, params=count_params(done.design))
    before = done_path.read_bytes()
    damaged_path = run_dir(stage_dir, damaged.id) / "result.json"
    damaged_path.parent.mkdir(parents=True)
    damaged_path.write_text('{"id": "x", "status": "o')

    trained = Worker(stage_dir, data_dir, device="cpu", poll_s=0.05, progress_s=1e9).run()

    assert trained == 2
    assert done_path.read_bytes() == before
    assert sorted(p.name for p in done_path.parent.iterdir()) == ["curve.csv", "result.json", "weights.pt"]
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


def test_read_result_valid_and_missing(tmp_path):
    stage_dir = tmp_path / "stage1"
    assert read_result(stage_dir, "nothing") is None
    path = run_dir(stage_dir, "abc") / "result.json"
    record = fake_result(path.parent, "abc")
    curve = (path.parent / "curve.csv").read_text()
    (path.parent / "curve.csv").unlink()
    assert read_result(stage_dir, "abc") is None  # no curve: not a usable result
    (path.parent / "curve.csv").write_text(curve)
    assert read_result(stage_dir, "abc") == record
    assert read_result(stage_dir, "abc", fingerprint="f" * 16)["status"] == "ok"
    assert read_result(stage_dir, "abc", fingerprint="e" * 16) is None  # finished, but under other settings
    assert path.exists()  # left for settle_result, which holds the run's lock


@pytest.mark.parametrize(
    "field, value",
    [("min_loss", "oops"), ("params", 1.5), ("steps", True), ("fingerprint", 7), ("fingerprint", "../../../../x"), ("data", "/tmp/x")],
)
def test_a_result_field_of_the_wrong_type_is_damage(tmp_path, field, value):
    stage_dir = tmp_path / "stage1"
    path = run_dir(stage_dir, "abc") / "result.json"
    fake_result(path.parent, "abc", **{field: value})
    assert read_result(stage_dir, "abc") is None
    assert settle_result(stage_dir, "abc", "f" * 16) is None
    assert list(path.parent.glob("result.json.corrupt-*"))


def test_settle_result_sets_other_settings_aside_and_restores_them(tmp_path):
    """Under the run's lock: another fingerprint's files move to superseded/<fp>/, and come back when wanted."""
    stage_dir = tmp_path / "stage1"
    folder = run_dir(stage_dir, "abc")
    fake_result(folder, "abc", fingerprint="a" * 16)
    (folder / "config.json").write_text("config.json of a\n")
    assert settle_result(stage_dir, "abc", "b" * 16) is None
    assert not (folder / "result.json").exists() and not (folder / "curve.csv").exists()
    aside = folder / "superseded" / ("a" * 16)
    assert sorted(p.name for p in aside.iterdir()) == ["config.json", "curve.csv", "result.json", "weights.pt"]
    back = settle_result(stage_dir, "abc", "a" * 16)
    assert back["fingerprint"] == "a" * 16
    assert (folder / "weights.pt").read_bytes() == b"weights of abc"
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


def test_a_stale_heartbeat_holds_no_run_even_where_its_pid_lives_on(tmp_path):
    """A pid reused by another process after its worker was killed: once the heartbeat is stale, the run is free."""
    from rnnsweep.progress import STALE_S, trained_elsewhere

    stage_dir = tmp_path / "stage1"
    (stage_dir / "progress").mkdir(parents=True)
    beat = {"host": socket.gethostname(), "pid": os.getppid(), "runs": ["abc"], "updated": time.time() - 2 * STALE_S}
    path = stage_dir / "progress" / f"{socket.gethostname()}-{os.getppid()}.json"
    path.write_text(json.dumps(beat))
    assert trained_elsewhere(stage_dir, "abc") is None
    path.write_text(json.dumps(beat | {"updated": time.time()}))
    assert trained_elsewhere(stage_dir, "abc") == f"{socket.gethostname()}:{os.getppid()}"
    assert trained_elsewhere(stage_dir, "other") is None
