"""Where a study stands, read from its results folder while workers on any machines write it.

`rnnsweep status` only reads: manifests, result records, and the heartbeat files
of live workers (rnnsweep.progress). It takes no lock and writes nothing, so it
is safe to run at any time, as often as one likes, from any machine that sees
the folder. A run is

- done: its result record is valid for its current settings and data (rnnsweep.results);
- diverged: the same, with status `diverged`;
- running: a worker whose heartbeat is fresh trains it;
- failed: the last worker that trained it stopped beating (killed, or its machine went away)
  and no live one holds it; the next free worker claims it again and resumes its checkpoint;
- waiting: none of these yet.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from rnnsweep import data
from rnnsweep.config import STAGES
from rnnsweep.grid import TOKENIZERS, ManifestError, Run, read_manifest
from rnnsweep.layout import DATA_DIR, RESULT, manifest_path, retrained_stage, run_dir
from rnnsweep.progress import STALE_S, read_heartbeats
from rnnsweep.results import read_result
from rnnsweep.stats import design_label
from rnnsweep.tokens import fingerprints, texts_for

RATE_WINDOW_S = 300.0  # design-steps per second are averaged over this many recent seconds
BEST = 5  # how many of the best runs so far are listed
#: The stage folders a study may have: its stages, then its last stage's runs trained on another tokenizer.
STUDY_STAGES = (*STAGES, *(retrained_stage(STAGES[-1], tokenizer) for tokenizer in TOKENIZERS))


@dataclass
class Holder:
    """A worker that trains some runs now, as its heartbeat says."""

    name: str  # host:pid (worker i of n)
    runs: list[str]
    step: int
    steps: int
    since: float
    steps_per_s: float
    updated: float


@dataclass
class StageStatus:
    """One stage's runs by state, its recent speed and the best runs so far."""

    name: str
    total: int = 0
    done: int = 0
    diverged: int = 0
    failed: int = 0
    waiting: int = 0
    running: list[Holder] = field(default_factory=list)
    stale: list[Holder] = field(default_factory=list)
    rate: float = 0.0  # design-steps per second over the last RATE_WINDOW_S
    left: int = 0  # design-steps still to train
    best: list[tuple[dict, Run]] = field(default_factory=list)
    problem: str | None = None  # why the stage could not be read

    @property
    def eta_s(self) -> float | None:
        return self.left / self.rate if self.rate > 0 and self.left else None


def studies(results: Path) -> list[Path]:
    """The study folders under `results`: itself if it is one, else those among its sub-folders, where a study of
    several corpora is a folder of studies (results/<study>/<corpus>/)."""
    results = Path(results)
    if (results / DATA_DIR).is_dir() or any((results / stage).is_dir() for stage in STUDY_STAGES):
        return [results]
    folders = sorted(folder for folder in results.iterdir() if folder.is_dir()) if results.is_dir() else []
    return [study for folder in folders for study in studies(folder)]


def _fingerprints(runs: list[Run], data_dir: Path, loaded: dict) -> dict[str, str]:
    """Each run's fingerprint under the data folder as it is; none while what the runs read is not all written.
    `loaded` keeps what was read for the study's other stages, so each split is hashed once per look."""
    try:
        return fingerprints(runs, texts_for(runs, data_dir, loaded))
    except (OSError, ValueError, data.DataError):
        return {}


def _holder(beat: dict) -> Holder:
    name = f"{beat.get('host')}:{beat.get('pid')} (worker {beat.get('worker')} of {beat.get('count')})"
    return Holder(name, [str(r) for r in beat["runs"]], int(beat.get("step") or 0), int(beat.get("steps") or 0),
                  float(beat.get("since") or beat.get("updated") or 0), float(beat.get("steps_per_s") or 0),
                  float(beat.get("updated") or 0))


def _overlap(start: float, end: float, now: float) -> float:
    """Seconds of [start, end] inside the last RATE_WINDOW_S before `now`."""
    return max(0.0, min(end, now) - max(start, now - RATE_WINDOW_S))


def _count_finished(status: StageStatus, stage_dir: Path, run: Run, result: dict, now: float) -> tuple[float, float | None]:
    """Count a finished run; return the design-steps it trained inside the rate window and when that training
    began (None if none of it is inside)."""
    status.diverged += result["status"] == "diverged"
    status.done += result["status"] == "ok"
    if result["status"] == "ok":
        status.best.append((result, run))
    ended = (run_dir(stage_dir, run.id) / RESULT).stat().st_mtime
    wall = max(float(result["wall_s"]), 1e-9)
    inside = _overlap(ended - wall, ended, now)
    return (result["steps"] * inside / wall, ended - wall) if inside else (0.0, None)


def _count_unfinished(status: StageStatus, run: Run, held: dict[str, Holder], abandoned: set[str]) -> None:
    """Count a run without a result: the steps it has left, and whether it waits or its worker failed."""
    if run.id in held:
        status.left += run.settings.steps - held[run.id].step
        return
    status.left += run.settings.steps
    if run.id in abandoned:
        status.failed += 1
    else:
        status.waiting += 1


def stage_status(
    stage_dir: Path, data_dir: Path, now: float | None = None, stale_s: float = STALE_S, loaded: dict | None = None
) -> StageStatus:
    """Read one stage: each run's state, the design-steps per second of the last minutes, the best runs so far.

    `loaded` is what its study's other stages read (rnnsweep.tokens.texts_for), shared so it is read once."""
    now = time.time() if now is None else now
    status = StageStatus(stage_dir.name)
    try:
        runs = read_manifest(manifest_path(stage_dir))
    except ManifestError as err:
        status.problem = str(err)
        return status
    status.total = len(runs)
    prints = _fingerprints(runs, data_dir, {} if loaded is None else loaded)
    beats = [_holder(beat) for beat in read_heartbeats(stage_dir)]
    live = [h for h in beats if now - h.updated <= stale_s]
    status.stale = [h for h in beats if now - h.updated > stale_s and h.runs]
    held = {run_id: h for h in live for run_id in h.runs}
    abandoned = {run_id for h in status.stale for run_id in h.runs}
    worked, starts = 0.0, [now]  # design-steps trained inside the window; when the training in it began
    for run in runs:
        result = read_result(stage_dir, run, prints[run.id]) if prints else None
        if result is None:
            _count_unfinished(status, run, held, abandoned)
            continue
        steps, began = _count_finished(status, stage_dir, run, result, now)
        worked += steps
        starts += [began] if began is not None else []
    for holder in live:
        if holder.runs:
            status.running.append(holder)
            worked += len(holder.runs) * holder.steps_per_s * _overlap(holder.since, now, now)
            starts.append(holder.since)
    # A stage that began inside the window is measured since it began, not over the whole window.
    status.rate = worked / max(now - max(min(starts), now - RATE_WINDOW_S), 1.0)
    status.best = sorted(status.best, key=lambda pair: (pair[0]["min_loss"], pair[1].id))[:BEST]
    return status


def study_status(study: Path, now: float | None = None) -> list[StageStatus]:
    """Every stage of a study that has a folder, in study order, then its last stage trained on other tokens."""
    loaded: dict = {}
    return [stage_status(study / stage, study / DATA_DIR, now, loaded=loaded) for stage in STUDY_STAGES if (study / stage).is_dir()]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def render_stage(status: StageStatus, now: float) -> list[str]:
    """A stage as a few lines of text."""
    if status.problem:
        return [f"{status.name}: cannot read it ({status.problem})"]
    running = sum(len(h.runs) for h in status.running)
    lines = [
        f"{status.name}: {status.total} runs: {status.done} done, {running} running, {status.waiting} waiting, "
        f"{status.diverged} diverged, {status.failed} failed"
    ]
    if status.done + status.diverged == status.total:
        lines[0] += " (finished)"
    else:
        eta = f"ETA {_duration(status.eta_s)}" if status.eta_s is not None else "no ETA yet"
        lines.append(f"  {status.rate:.0f} design-steps/s over the last {RATE_WINDOW_S / 60:.0f} min, "
                     f"{status.left} design-steps left, {eta}")
    for h in status.running:
        lines.append(f"  running  {h.name}: {_runs(h.runs)} at step {h.step}/{h.steps}, "
                     f"{h.steps_per_s:.0f} steps/s, since {_clock(h.since)}")
    for h in status.stale:
        lines.append(f"  failed   {h.name}: {_runs(h.runs)}, no heartbeat since {_clock(h.updated)} "
                     f"({_duration(now - h.updated)} ago); the next free worker resumes them")
    if status.best:
        unit = "byte" if status.best[0][1].tokenizer == "bytes" else "token"
        lines.append(f"  best {len(status.best)} so far by min_loss (nats, bits per {unit}), with valid_bpb:")
        for rank, (result, run) in enumerate(status.best, 1):
            row = {**run.row(), **result}
            lines.append(f"    {rank}. {run.id}  {design_label(row):<28} {result['min_loss']:.4f} nats "
                         f"{result['min_loss'] / math.log(2):.4f} bits  valid {result['valid_bpb']:.4f}")
    return lines


def _runs(ids: list[str]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]} and {len(ids) - 1} more"


def render(results: Path, now: float | None = None) -> str:
    """The status of every study under `results`, as text."""
    now = time.time() if now is None else now
    found = studies(results)
    if not found:
        return f"{results}: no study here yet (nothing has run, or this is not a results folder)"
    lines = []
    for study in found:
        stages = study_status(study, now)
        lines.append(f"{study}  ({_clock(now)})")
        lines += [line for stage in stages for line in render_stage(stage, now)] or ["  no stage started yet"]
    return "\n".join(lines)
