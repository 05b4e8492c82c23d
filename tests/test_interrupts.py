"""Stopping real worker processes mid-run: SIGTERM, SIGINT, SIGKILL, soft-lease takeover (rnnsweep.claims, cli, train).

Every scenario drives `python -m rnnsweep worker` as a subprocess, interrupts
it the way a scheduler, a user or a crash would, and records what is left on
disk at that moment: a checkpoint, no result record, a free lock. The same
command is then run again, and the finished curve and weights must be
bit-identical to those of a run nobody disturbed.

Each worker process pays a fixed ~6 s (importing torch, the torch._dynamo
import that the first torch.optim.Adam triggers, interpreter teardown), so the
independent scenarios run in the background, two at a time, as soon as the
module starts; each test waits for its own scenario and checks what it saw.
The scenarios follow the tests; the process harness they use is tests/scheduling.py.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock, SoftFileLease

from conftest import start_lease_holder
from designs import design
from rnnsweep import config
from rnnsweep.design import Design
from rnnsweep.grid import make_runs, write_manifest
from rnnsweep.layout import CHECKPOINT, RESULT, lock_path, manifest_path, run_dir
from scheduling import (
    Countdown,
    assert_same_run,
    can_take,
    checkpoint_step,
    finish,
    kill,
    run_to_end,
    start_steps,
    start_worker,
    uses,
    wait_for,
    wait_for_checkpoint_step,
    wanted_scenarios,
)

#: A run of about 2 s on one idle CPU thread (plus ~6 s of process overhead), so there is time to interrupt it.
DESIGN = design("forget_gate", "state_gate", "new_state", "residual", n_layers=2, state_size=32)
LONG = dict(steps=1000, batch_size=8, history_size=16, log_every=10, lr=1e-3, eval_bytes=32)
#: The lease scenario only needs runs that finish; keep them short.
SHORT = dict(LONG, steps=200)
CHECKPOINT_EVERY = 100
#: The shortest lease a worker takes (the schema's least lock_lease_s), so the lease tests wait as little as they can.
LEASE_S = float(config.node(("lock_lease_s",))["minimum"])
KILL_SEEDS = (2, 5)  # kills soon after step 200 and a quarter of the way from step 600 to 700
SCENARIO_TIMEOUT_S = 240


# --------------------------------------------------------------------------- signals the worker handles


def _signalled(scenarios: dict, signum: signal.Signals, exit_code: int) -> dict:
    """What the scenario of `signum` saw, once checked that the worker it signalled mid-run exited with
    `exit_code` (128 + the signal) and wrote no result."""
    seen = _seen(scenarios, signum.name.lower())
    print(f"\n{signum.name} -> exit: {seen['signal_to_exit_s']:.3f}s (checkpoint at step {seen['step']})")
    assert seen["alive_when_signalled"], seen["stop_log"][-3000:]
    assert seen["exit"] == 128 + signum == exit_code, seen["stop_log"][-3000:]
    assert not seen["result_after_stop"]
    return seen


@uses("sigterm")
def test_sigterm_checkpoints_releases_the_lock_exits_143_and_resumes_exactly(scenarios):
    seen = _signalled(scenarios, signal.SIGTERM, 143)
    assert seen["signal_to_exit_s"] < 5.0
    assert "received SIGTERM" in seen["stop_log"]
    step = seen["step"]
    assert step is not None and CHECKPOINT_EVERY <= step < LONG["steps"]
    assert f"interrupted; checkpoint at step {step}" in seen["stop_log"]
    assert seen["lock_free"]
    # The rerun resumed from that checkpoint (a restart from 0 would give the same files too) and finished.
    assert f"resuming {seen['run_id']} from step {step}" in seen["log"]
    assert seen["start_steps"] == [0, step]
    assert (seen["rdir"] / RESULT).exists() and not seen["checkpoint_left"]
    assert_same_run(seen["rdir"], scenarios["reference"].run_dir())


@uses("sigint")
def test_sigint_exits_130_releases_the_soft_lease_and_resumes(scenarios):
    seen = _signalled(scenarios, signal.SIGINT, 130)
    assert seen["step"] is not None and seen["step"] >= CHECKPOINT_EVERY
    # The lease was released, not left to expire: its marker is gone and a new claim succeeds at once.
    assert not seen["marker_left"]
    assert seen["lock_free"]
    assert f"resuming {seen['run_id']} from step {seen['step']}" in seen["log"]
    assert (seen["rdir"] / RESULT).exists()
    assert_same_run(seen["rdir"], scenarios["reference"].run_dir())


# --------------------------------------------------------------------------- a crash nobody handles


@pytest.mark.parametrize("seed", KILL_SEEDS)
@uses("sigkill")
def test_sigkill_at_a_random_moment_resumes_bit_for_bit(scenarios, seed):
    seen = _seen(scenarios, f"sigkill-{seed}")
    print(
        f"\nSIGKILL {seen['delay']:.3f}s after the checkpoint of step {seen['after_step']} "
        f"(seed {seed}, fraction {seen['fraction']:.3f}); resumable from step {seen['step']}"
    )
    assert seen["alive_when_killed"], f"the run ended before the kill; lengthen LONG:\n{seen['log'][-3000:]}"
    assert not seen["result_after_kill"]
    step = seen["step"]
    assert step in (seen["after_step"], seen["after_step"] + CHECKPOINT_EVERY)
    assert (seen["rdir"] / RESULT).exists(), seen["log"][-3000:]
    assert f"resuming {seen['run_id']} from step {step}" in seen["log"]
    assert seen["start_steps"] == [0, step]
    assert not seen["checkpoint_left"]
    assert not seen["temps_left"], "temp files of the killed writer are left"
    assert_same_run(seen["rdir"], scenarios["reference"].run_dir())


# --------------------------------------------------------------------------- soft leases


@uses("leases")
def test_soft_lease_of_a_holder_killed_on_this_host_is_taken_over(scenarios):
    seen = _seen(scenarios, "leases")
    print(f"\nsoft leases: dead holders' runs finished {seen['finished_s']} s after the worker started")
    assert seen["markers_left"]
    assert seen["finished_s"]["local"] is not None, seen["log"]


@uses("leases")
def test_soft_lease_of_a_holder_dead_on_another_host_is_taken_over_after_lease_s(scenarios):
    """Its pid cannot be probed from here: only the lease left unrefreshed frees the run (what `soft` exists for)."""
    seen = _seen(scenarios, "leases")
    assert seen["finished_s"]["remote"] is not None, seen["log"]


@uses("leases")
def test_soft_lease_of_a_live_holder_is_not_taken_over(scenarios):
    seen = _seen(scenarios, "leases")
    assert seen["worker_running"], f"worker exited while a run was still held:\n{seen['log']}"
    assert not seen["live_finished"] and not seen["live_finished_after_exit"]
    assert seen["exit"] == 143, seen["log"]
    assert seen["holder_alive"]
    assert seen["live_claim_after"] == seen["live_claim"]  # still the holder's claim, byte for byte


# --------------------------------------------------------------------------- the scenarios, started in the background


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory, data_dir):
    """Futures of every needed scenario, all started now, the signal and kill ones two at a time.

    The undisturbed run and the lease scenario start once the SIGTERM and
    SIGINT exits have been timed, so those two exits share the two cores with
    nothing but each other.
    """
    wanted = wanted_scenarios(request)
    ref = Reference(tmp_path_factory.mktemp("undisturbed"), data_dir) if wanted - {"leases"} else None
    timed = Countdown(len(wanted & {"sigterm", "sigint"}))
    jobs = {
        "sigterm": (signal_scenario, signal.SIGTERM, False, timed),
        "sigint": (signal_scenario, signal.SIGINT, True, timed),
        **{f"sigkill-{seed}": (kill_scenario, seed) for seed in KILL_SEEDS},
    }
    lease_root = tmp_path_factory.mktemp("leases")

    def side_job() -> dict | None:
        timed.event.wait(120)
        if ref is not None:
            ref.start()
        return lease_scenario(lease_root, data_dir) if "leases" in wanted else None

    lanes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scenario")
    side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="side")
    futures: dict[str, Future | Reference | None] = {"reference": ref}
    try:
        for key, (fn, *args) in jobs.items():
            if key in wanted:
                futures[key] = lanes.submit(fn, tmp_path_factory.mktemp(key), data_dir, *args)
        futures["leases"] = side.submit(side_job)
        yield futures
    finally:
        lanes.shutdown(wait=True, cancel_futures=True)
        side.shutdown(wait=True, cancel_futures=True)
        if ref is not None and ref.proc is not None:
            kill(ref.proc)


def _seen(scenarios: dict, key: str) -> dict:
    return scenarios[key].result(timeout=SCENARIO_TIMEOUT_S)


# --------------------------------------------------------------------------- what each scenario does and records


def _stage(root: Path, settings: dict, designs: tuple[Design, ...] = (DESIGN,)) -> tuple[Path, list[str]]:
    """A results folder whose stage1 manifest holds one run per design; returns (results, run ids)."""
    results = root / "results"
    runs = make_runs(designs, settings)
    write_manifest(manifest_path(results / "stage1"), runs)
    return results, [run.id for run in runs]


def _worker(results: Path, data_dir: Path, log: Path, **overrides: object) -> subprocess.Popen:
    """One real worker process on the stage1 of `results`, checkpointing every CHECKPOINT_EVERY steps."""
    return start_worker(results, data_dir, log, checkpoint_every=CHECKPOINT_EVERY, **overrides)


class Reference:
    """LONG trained in one go by the same command, in its own results folder, in the background."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.results, (run_id,) = _stage(root, LONG)
        self.data_dir, self.log = data_dir, root / "worker.log"
        self.dir = run_dir(self.results / "stage1", run_id)
        self.proc: subprocess.Popen | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.proc = _worker(self.results, self.data_dir, self.log)
        self._started.set()

    def run_dir(self) -> Path:
        assert self._started.wait(SCENARIO_TIMEOUT_S), "the undisturbed run never started"
        with self._lock:
            code = finish(self.proc, self.log)
        assert code == 0, self.log.read_text()[-3000:]
        assert (self.dir / RESULT).exists() and not (self.dir / CHECKPOINT).exists()
        return self.dir


def signal_scenario(root: Path, data_dir: Path, signum: int, soft: bool, timed: Countdown) -> dict:
    """Signal a worker just past its first checkpoint, look at what it left, then rerun the same command.

    `timed` is told once the exit has been timed, so other workers can start without slowing that exit down.
    """
    done = timed.party()
    try:
        return _signal_scenario(root, data_dir, signum, soft, done)
    finally:
        done()  # if it failed before the exit was timed


def _signal_scenario(root: Path, data_dir: Path, signum: int, soft: bool, timed) -> dict:
    extra = {"lock": "soft", "lock_lease_s": LEASE_S} if soft else {}
    results, (run_id,) = _stage(root, LONG)
    stage_dir = results / "stage1"
    rdir, path, log = run_dir(stage_dir, run_id), lock_path(stage_dir, run_id), root / "worker.log"
    seen: dict = {"run_id": run_id, "rdir": rdir}

    proc = _worker(results, data_dir, log, **extra)
    try:
        wait_for(rdir / CHECKPOINT, proc, log)
        time.sleep(0.2)  # inside the run, past the first checkpoint
        seen["alive_when_signalled"] = proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signum)
        seen["exit"] = proc.wait(timeout=30)
        seen["signal_to_exit_s"] = time.monotonic() - sent
    finally:
        kill(proc)
        timed()
    seen["stop_log"] = log.read_text()
    seen["result_after_stop"] = (rdir / RESULT).exists()
    seen["step"] = checkpoint_step(rdir / CHECKPOINT)
    seen["marker_left"] = path.exists()  # a released soft lease removes its marker
    seen["lock_free"] = can_take(SoftFileLease(path, lease_duration=LEASE_S) if soft else FileLock(path))

    run_to_end(_worker(results, data_dir, log, **extra), log)
    seen["log"] = log.read_text()
    seen["checkpoint_left"] = (rdir / CHECKPOINT).exists()
    seen["start_steps"] = start_steps(rdir)
    return seen


def kill_scenario(root: Path, data_dir: Path, seed: int) -> dict:
    """SIGKILL a worker at a seeded random moment, then rerun the same command until the run is finished.

    The moment is a random checkpoint from the 2nd to the 7th, plus a random
    fraction of the time between checkpoints (timed there), so it falls
    inside the run, between two checkpoints, on a slow machine or a fast one.
    """
    results, (run_id,) = _stage(root, LONG)
    rdir, log = run_dir(results / "stage1", run_id), root / "worker.log"
    rng = random.Random(seed)
    seen: dict = {"run_id": run_id, "rdir": rdir}
    seen["target"], seen["fraction"] = CHECKPOINT_EVERY * rng.randint(2, 7), rng.random()

    proc = _worker(results, data_dir, log)
    try:
        seen["after_step"], gap = wait_for_checkpoint_step(rdir / CHECKPOINT, seen["target"], proc, log)
        seen["delay"] = seen["fraction"] * gap
        time.sleep(seen["delay"])
        seen["alive_when_killed"] = proc.poll() is None
        proc.kill()
        proc.wait(timeout=30)
    finally:
        kill(proc)
    seen["result_after_kill"] = (rdir / RESULT).exists()
    seen["step"] = checkpoint_step(rdir / CHECKPOINT)

    seen["reruns"] = 0
    while not (rdir / RESULT).exists() and seen["reruns"] < 3:  # the same command, until the run is finished
        run_to_end(_worker(results, data_dir, log), log)
        seen["reruns"] += 1
    seen["log"] = log.read_text()
    seen["checkpoint_left"] = (rdir / CHECKPOINT).exists()
    seen["temps_left"] = sorted(p.name for p in rdir.glob(".*.tmp"))
    seen["start_steps"] = start_steps(rdir)
    return seen


def lease_scenario(root: Path, data_dir: Path) -> dict:
    """One soft-lock worker against three runs whose leases are already taken.

    - `local`: its holder was killed on this host (the marker names a dead pid);
    - `remote`: its holder was killed on "another host" (a pid nobody here can
      probe), so only the lease going unrefreshed for LEASE_S frees it;
    - `live`: its holder runs on, its heartbeat refreshing the lease.

    The worker must train the first two and keep waiting on the third; once
    it has watched the live lease for well over LEASE_S it is sent SIGTERM.
    """
    names = ("local", "remote", "live")
    results, ids = _stage(root, SHORT, (DESIGN, DESIGN.replace(state_size=16), DESIGN.replace(state_size=8)))
    stage_dir = results / "stage1"
    paths = {n: lock_path(stage_dir, i) for n, i in zip(names, ids)}
    done = {n: run_dir(stage_dir, i) / RESULT for n, i in zip(names, ids)}
    seen: dict = {}

    live = start_lease_holder(paths["live"], LEASE_S)
    try:
        seen["live_claim"] = paths["live"].read_bytes()  # a takeover would write a claim of its own
        dead_local = start_lease_holder(paths["local"], LEASE_S)
        dead_remote = start_lease_holder(paths["remote"], LEASE_S, host="node-elsewhere")
        kill(dead_local)  # each dies holding its lease: the lease file stays, never refreshed again
        kill(dead_remote)
        seen["markers_left"] = paths["local"].exists() and paths["remote"].exists()

        log = root / "worker.log"
        proc = _worker(results, data_dir, log, lock="soft", lock_lease_s=LEASE_S)
        started = time.monotonic()
        try:
            finished: dict[str, float | None] = {"local": None, "remote": None}
            while None in finished.values() and proc.poll() is None and time.monotonic() < started + 45:
                for name in finished:
                    if finished[name] is None and done[name].exists():
                        finished[name] = round(time.monotonic() - started, 2)
                time.sleep(0.05)
            seen["finished_s"] = finished
            # The worker has watched the live lease since its first scan, at least LEASE_S before it could take
            # the remote one; it rescans every 2 s: give it at least one more look (> 2.5 * LEASE_S in all).
            time.sleep(1.5 * LEASE_S)
            seen["worker_running"] = proc.poll() is None
            seen["live_finished"] = done["live"].exists()
            proc.send_signal(signal.SIGTERM)
            seen["exit"] = proc.wait(timeout=30)
            seen["live_finished_after_exit"] = done["live"].exists()
        finally:
            kill(proc)
        seen["log"] = log.read_text()[-3000:]
        seen["holder_alive"] = live.poll() is None
        seen["live_claim_after"] = paths["live"].read_bytes() if paths["live"].exists() else b""
    finally:
        kill(live)
    return seen
