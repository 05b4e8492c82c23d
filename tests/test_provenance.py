"""A result always belongs to the settings and bytes it claims (rnnsweep.provenance, claims, train, the workflow).

Changing a setting or the corpus retrains exactly the runs it affects; a
result or checkpoint of other settings, other bytes or another run is never
used; a damaged stage is healed by the command that finds it; no command run
with another configuration touches this one's files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from grouping import stop_at
from rnnsweep import provenance
from rnnsweep.claims import Worker
from rnnsweep.data import SPLITS, generate_corpus, load_split, prepare_corpus
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.config import STAGES
from rnnsweep.layout import ATTEMPTS, CHECKPOINT, RESULT, SUPERSEDED, manifest_path, run_dir, study_dir, summary_path
from rnnsweep.tokens import Text
from rnnsweep.train import Interrupted, train_run

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-3, eval_bytes=16)
CPU = torch.device("cpu")


def _stage(results: Path, settings: dict, n_runs: int = 3) -> list:
    runs = make_runs(stage1_designs([1, 2], [4])[::50][:n_runs], settings)
    write_manifest(manifest_path(results / "stage1"), runs)
    return runs


def _train(results: Path, data_dir: Path) -> int:
    """Runs trained by one worker until the stage is done."""
    return Worker(results / "stage1", data_dir, device="cpu", poll_s=0.05, progress_s=1e9).run()


def _files(results: Path, run_id: str) -> dict[str, bytes]:
    folder = run_dir(results / "stage1", run_id)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ATTEMPTS}


# --------------------------------------------------------------------------- the fingerprint


def test_fingerprint_changes_with_everything_that_makes_the_numbers(monkeypatch):
    (run,) = make_runs(stage1_designs([1], [4])[:1], TINY)
    base = provenance.fingerprint(run, "d" * 16)
    assert provenance.fingerprint(run, "d" * 16) == base  # stable
    changed = [
        dataclasses.replace(run, design=run.design.replace(state_size=5)),
        dataclasses.replace(run, seed=run.seed + 1),
        dataclasses.replace(run, replicate=1, id=f"{run.id}-r1"),
        dataclasses.replace(run, precision="bf16"),
        *(dataclasses.replace(run, settings=run.settings.replace(**{k: v * 2})) for k, v in TINY.items()),
    ]
    prints = {provenance.fingerprint(other, "d" * 16) for other in changed} | {provenance.fingerprint(run, "e" * 16)}
    monkeypatch.setattr(provenance, "ENGINE", "engine-next")
    prints.add(provenance.fingerprint(run, "d" * 16))
    assert base not in prints and len(prints) == len(changed) + 2


def test_data_id_is_the_content_of_all_three_splits(splits):
    train, valid, test = splits
    base = provenance.data_id(train, valid, test)
    flipped = train.copy()
    flipped[len(flipped) // 2] ^= 1
    assert provenance.data_id(train.copy(), valid.copy(), test.copy()) == base
    assert provenance.data_id(flipped, valid, test) != base
    assert provenance.data_id(train, valid[:-1], test) != base
    assert provenance.data_id(train, valid, test[1:]) != base
    assert provenance.data_id(valid, train, test) != base


# --------------------------------------------------------------------------- the CLI's workers


def test_changed_settings_retrain_exactly_the_changed_runs_and_changing_back_restores(tmp_path, data_dir, one_thread):
    results = tmp_path / "results"
    runs = _stage(results, TINY)
    assert _train(results, data_dir) == 3
    before = {run.id: _files(results, run.id) for run in runs}

    changed = [runs[0], *make_runs([runs[1].design], {**TINY, "steps": 25}), runs[2]]
    write_manifest(manifest_path(results / "stage1"), changed)
    assert _train(results, data_dir) == 1
    for run in (runs[0], runs[2]):
        assert _files(results, run.id) == before[run.id], f"{run.id} was touched"
    record = json.loads((run_dir(results / "stage1", runs[1].id) / RESULT).read_text())
    assert record["steps"] == 25
    assert record["fingerprint"] == provenance.fingerprint(changed[1], provenance.data_id(*_splits(data_dir)))
    old = run_dir(results / "stage1", runs[1].id) / SUPERSEDED / json.loads(before[runs[1].id][RESULT])["fingerprint"]
    assert (old / RESULT).read_bytes() == before[runs[1].id][RESULT]  # kept, not lost

    write_manifest(manifest_path(results / "stage1"), runs)  # the settings changed back
    assert _train(results, data_dir) == 0
    assert _files(results, runs[1].id) == before[runs[1].id]


def test_a_worker_started_before_the_manifest_changed_stops_instead_of_undoing_it(tmp_path, data_dir, one_thread):
    """Its fingerprints are of the old rows: acting on them would set aside the results the new rows need."""
    from rnnsweep.grid import ManifestError

    results = tmp_path / "results"
    runs = _stage(results, TINY)
    stale = Worker(results / "stage1", data_dir, device="cpu", poll_s=0.05, progress_s=1e9)
    stale.inputs = stale._input_stamp()
    write_manifest(manifest_path(results / "stage1"), make_runs([r.design for r in runs], {**TINY, "steps": 25}))
    with pytest.raises(ManifestError, match="changed since this worker started"):
        stale._check_inputs()


def _splits(data_dir: Path):
    return tuple(load_split(data_dir, split) for split in SPLITS)


def test_another_corpus_retrains_every_run(tmp_path, data_dir, one_thread):
    results = tmp_path / "results"
    runs = _stage(results, TINY, n_runs=2)
    assert _train(results, data_dir) == 2
    other = tmp_path / "other"
    prepare_corpus("generated", other, cache_dir=tmp_path, generated_bytes=20_000, seed=1)
    assert _train(results, other) == 2
    for run in runs:
        record = json.loads((run_dir(results / "stage1", run.id) / RESULT).read_text())
        assert record["data"] == provenance.data_id(*_splits(other)) != provenance.data_id(*_splits(data_dir))


def test_a_checkpoint_of_another_run_is_moved_aside_not_resumed(tmp_path, splits, one_thread, caplog):
    """Copying replicate r1's checkpoint into r2's folder must not make r2's result r1's."""
    _, r1, r2 = make_runs(stage1_designs([1], [4])[:1], {**TINY, "steps": 40}, replicates=3)
    stop, report = stop_at(20)
    with pytest.raises(Interrupted):
        train_run(r1, Text.of_bytes(*splits), tmp_path / r1.id, CPU, report=report, stop=stop)
    (tmp_path / r2.id).mkdir()
    shutil.copy(tmp_path / r1.id / CHECKPOINT, tmp_path / r2.id / CHECKPOINT)
    got = train_run(r2, Text.of_bytes(*splits), tmp_path / r2.id, CPU)
    alone = train_run(r2, Text.of_bytes(*splits), tmp_path / "alone", CPU)
    assert got["min_loss"] == alone["min_loss"] and got["seed"] == r2.seed
    assert (tmp_path / r2.id / "curve.csv").read_bytes() == (tmp_path / "alone" / "curve.csv").read_bytes()
    assert list((tmp_path / r2.id).glob(f"{CHECKPOINT}.corrupt-*"))
    assert any("fingerprint" in r.getMessage() and r2.id in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- through Snakemake


def _snakemake(workdir: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


STUDY = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())["study"]
#: What the tests below change is read from stage 1, so they ask Snakemake for stage 1 alone (tests/test_workflow.py
#: runs the whole smoke study).
STAGE1 = str(summary_path(Path(study_dir(STUDY)) / STAGES[0]))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, copy_checkout) -> Path:
    """Stage 1 of the smoke study, finished in a copy of the checkout; the tests below change it in order."""
    workdir = copy_checkout(tmp_path_factory.mktemp("provenance"))
    _snakemake(workdir, STAGE1, "--configfile", "configs/smoke.yaml")
    return workdir


def _stage1(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / STAGE1)


def test_snakemake_without_the_profile_touches_nothing_of_the_study(smoke):
    """The figure re-render of the README, typed without its --configfile, and a missing corpus."""
    before = _snapshot(smoke / "results")
    done = _snakemake(smoke, "--cores", "1", "-f", f"figures/{STUDY}/stage1/swarm_all.png", ok=False)
    assert done.returncode != 0
    missing = _snakemake(smoke, "--configfile", "configs/smoke.yaml", "--config", "corpus=../missing/file", ok=False)
    assert missing.returncode != 0 and "../missing/file" in missing.stdout + missing.stderr
    assert _snapshot(smoke / "results") == before
    assert sorted(p.name for p in (smoke / "results").iterdir()) == [STUDY]


def test_snakemake_override_of_a_nested_setting_retrains_stage1(smoke):
    before = _stage1(smoke)
    _snakemake(smoke, STAGE1, "--configfile", "configs/smoke.yaml", "--config", "stage1={steps: 35}")
    after = _stage1(smoke)
    assert (after["steps"] == 35).all() and (after.loc[after["status"] == "ok", "steps_done"] == 35).all()
    assert (after["fingerprint"] != before["fingerprint"]).all()
    for run_id in after["id"][:5]:
        config = json.loads((smoke / "results" / STUDY / "stage1" / "runs" / run_id / "config.json").read_text())
        assert config["steps"] == 35


def test_snakemake_with_another_corpus_retrains_every_run(smoke):
    before = _stage1(smoke)
    corpus = smoke / "other-corpus.txt"
    corpus.write_bytes(generate_corpus(200_000, seed=5))
    _snakemake(smoke, STAGE1, "--configfile", "configs/smoke.yaml", "--config", "stage1={steps: 35}", f"corpus={corpus.name}")
    after = _stage1(smoke)
    assert len(set(after["data"])) == 1 and set(after["data"]) != set(before["data"])
    assert (after["min_loss"] != before["min_loss"]).any()


def test_a_corpus_edited_in_place_with_its_old_mtime_is_read_again(smoke):
    """The corpus is known by its bytes: an edit whose modification time is set back still reruns the corpus step."""
    corpus = smoke / "other-corpus.txt"
    stat, original = corpus.stat(), corpus.read_bytes()
    args = (STAGE1, "--configfile", "configs/smoke.yaml", "--config", "stage1={steps: 35}", f"corpus={corpus.name}")
    assert "Nothing to be done" in _snakemake(smoke, *args, "-n").stdout
    edited = bytearray(original)
    edited[1000] ^= 1
    corpus.write_bytes(bytes(edited))
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # `touch -d` back to the old time
    plan = _snakemake(smoke, *args, "-n").stdout
    assert re.search(r"^rule corpus:", plan, re.M) or re.search(r"\bcorpus\b\s+1\b", plan), plan[-3000:]
    corpus.write_bytes(original)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "Nothing to be done" in _snakemake(smoke, *args, "-n").stdout


def test_snakemake_heals_a_damaged_result_of_a_finished_stage(smoke):
    stage = smoke / Path(STAGE1).parent
    victim = _stage1(smoke)["id"][7]
    result = stage / "runs" / victim / RESULT
    want = json.loads(result.read_text())["min_loss"]
    attempts = (stage / "runs" / victim / ATTEMPTS).read_text().count("\n")
    result.write_text(result.read_text()[:40])
    (smoke / STAGE1).unlink()
    corpus = smoke / "other-corpus.txt"
    _snakemake(smoke, STAGE1, "--configfile", "configs/smoke.yaml", "--config", "stage1={steps: 35}", f"corpus={corpus.name}")
    healed = _stage1(smoke).set_index("id")
    assert len(healed) == 432 and healed.loc[victim, "min_loss"] == want
    assert (stage / "runs" / victim / ATTEMPTS).read_text().count("\n") == attempts + 1  # trained once more
