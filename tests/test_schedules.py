"""Learning-rate schedules and gradient clipping (rnnsweep.optim.Schedule, ByteModel.clip_grad_norm_, train.optimiser_step).

The engine's update is held to the plain reference trained the ordinary way:
torch.optim.Adam, the rate from torch.optim.lr_scheduler (SequentialLR of a
LinearLR warm-up, then CosineAnnealingLR or LinearLR) and the gradient clipped
by torch.nn.utils.clip_grad_norm_, each run in its own model. In float64 the
two agree to rounding on every switch setting at every depth, on both paths,
every replicate clipped by its own norm.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

import rnnsweep.train as train_mod
from designs import all_on
from grouping import TINY, stop_at
from rnnsweep import cli, config, options, provenance
from rnnsweep.design import Design
from rnnsweep.grid import Settings, make_runs, read_manifest
from rnnsweep.model import ByteModel
from rnnsweep.optim import SCHEDULES, Adam, Schedule
from rnnsweep.reference import ReferenceModel, engine_state, load_engine_state
from rnnsweep.tokens import Text
from rnnsweep.train import Interrupted, optimiser_step, train_runs
from test_model import ALL_SWITCHES, TOL
from test_replicates import assert_same_run, _start_steps
from test_train import read_curve, reference, weights

CPU = torch.device("cpu")
PROFILES = Path(__file__).resolve().parents[1] / "configs"
#: The training settings this file is about: each has a schema default, the published rule's.
RULE_KEYS = ("lr_schedule", "warmup_steps", "min_lr_fraction", "grad_clip")
#: (lr_schedule, warmup_steps, min_lr_fraction): each kind with and without a warm-up, several ends.
RULES = [("constant", 0, 0.1), ("constant", 3, 0.1), ("cosine", 0, 0.1), ("cosine", 3, 0.0), ("linear", 0, 0.5), ("linear", 3, 0.1)]
STEPS, BATCH, LR = 8, 4, 1e-2
#: Designs per test: the 96 switch settings at one depth in six groups, each trained under one of RULES.
CHUNK = 16


def _settings(rule: tuple[str, int, float], **changes: object) -> Settings:
    kind, warmup, fraction = rule
    values = TINY | {"steps": STEPS, "lr": LR, "lr_schedule": kind, "warmup_steps": warmup, "min_lr_fraction": fraction}
    return Settings.of(values | changes)


def reference_scheduler(opt: torch.optim.Optimizer, schedule: Schedule) -> LRScheduler | None:
    """The schedule as torch.optim.lr_scheduler spells it (None: a constant rate): a LinearLR warm-up from lr/W
    to lr over its W steps, then CosineAnnealingLR or LinearLR down towards m·lr over the T steps after it."""
    m, warmup, after = schedule.min_fraction, schedule.warmup, schedule.steps - schedule.warmup
    parts: list[LRScheduler] = []
    if warmup:
        parts.append(LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1))
    if schedule.kind == "cosine":
        parts.append(CosineAnnealingLR(opt, T_max=after, eta_min=m * schedule.lr))
    elif schedule.kind == "linear":
        parts.append(LinearLR(opt, start_factor=1.0, end_factor=m, total_iters=after))
    if len(parts) < 2:
        return parts[0] if parts else None
    return SequentialLR(opt, parts, milestones=[warmup])


def test_the_settings_defaults_are_the_published_rule():
    """A constant rate (the engine then never sets it) and no clipping: training as before the settings existed."""
    settings = Settings.of(TINY)
    assert Schedule.of(settings) == Schedule(TINY["lr"], TINY["steps"]) and Schedule.of(settings).constant
    assert settings.grad_clip == 0


def test_a_profile_that_sets_them_reaches_the_manifest_and_one_that_leaves_them_out_passes_nothing(tmp_path):
    """Left out, no rule passes the keys (its arguments, and so its jobs, stay as they were) and the runs take
    the defaults, which leave the fingerprint as it was; set, every run of the stage carries them."""
    profile = config.load(PROFILES / "default.yaml", PROFILES / "smoke.yaml")
    added = [options.option(key) for key in RULE_KEYS]
    assert not set(added) & set(options.manifest_args(profile, "stage1"))
    rule = {"lr_schedule": "linear", "warmup_steps": 5, "min_lr_fraction": 0.0, "grad_clip": 1.5}
    for name, stage1 in (("out", profile["stage1"]), ("set", profile["stage1"] | rule)):
        args = options.manifest_args(config.validate(profile | {"stage1": stage1}), "stage1")
        assert cli.main(["grid", "--out", str(tmp_path / name / "manifest.csv"), *args]) == 0
    left_out, given = (read_manifest(tmp_path / name / "manifest.csv")[0] for name in ("out", "set"))
    assert {key: left_out.settings[key] for key in RULE_KEYS} == config.training_defaults()
    assert {key: given.settings[key] for key in RULE_KEYS} == rule
    before = Settings({key: value for key, value in left_out.settings.items() if key not in RULE_KEYS})  # a run of before
    data = "d" * 16
    assert provenance.fingerprint(left_out, data) == provenance.fingerprint(dataclasses.replace(left_out, settings=before), data)
    assert provenance.fingerprint(given, data) != provenance.fingerprint(dataclasses.replace(given, settings=left_out.settings), data)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 1, 2, 5, 19])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 1.0])
def test_each_steps_rate_is_the_one_torchs_schedulers_give(kind, warmup, fraction):
    schedule = Schedule(3e-3, 20, kind, warmup, fraction)
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=schedule.lr)
    scheduler = reference_scheduler(opt, schedule)
    for step in range(schedule.steps):
        assert schedule.rate(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-14, abs=0), step
        opt.step()
        if scheduler is not None:
            scheduler.step()
    assert schedule.constant == (kind == "constant" and warmup == 0)


def _reference_run(design: Design, start: dict[str, torch.Tensor], schedule: Schedule, clip: float,
                   data: torch.Tensor) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    """(losses, gradient norms before clipping, final weights) of one run trained by the plain reference."""
    ref = load_engine_state(ReferenceModel(design).double(), start)
    opt = torch.optim.Adam(ref.parameters(), lr=schedule.lr)
    scheduler = reference_scheduler(opt, schedule)
    states = [s.double() for s in ref.initial_state(data.shape[0], CPU)]
    losses, norms = [], []
    for step in range(schedule.steps):
        opt.zero_grad()
        logits, states = ref(data[:, step], states)
        loss = F.cross_entropy(logits, data[:, step + 1])
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)))
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses, norms, engine_state(ref)


def check_against_reference(designs: list[Design], seeds: list[int], superset: bool, rule: tuple[str, int, float]) -> float:
    """Train replicates of `designs` (one design on the design path) as one float64 engine model by
    `optimiser_step`, each against its own reference run: every step's loss and the final weights; return the
    largest difference. Clipping must have bitten at some steps and not at others."""
    model = ByteModel(designs, seeds, dtype=torch.float64, superset=superset)
    starts = [model.replicate(model.theta, r) for r in range(len(seeds))]
    data = torch.randint(0, 256, (len(seeds), BATCH, STEPS + 1), generator=torch.Generator().manual_seed(seeds[0]))
    settings = _settings(rule, grad_clip=_midway(model, data))
    schedule = Schedule.of(settings)
    opt = Adam(model.theta, model.grad, settings.lr)
    states, losses = model.initial_state(BATCH), []
    for step in range(STEPS):
        loss, states = model.train_step(data[:, :, step], data[:, :, step + 1], states)
        optimiser_step(model, opt, schedule, settings.grad_clip, step)
        losses.append(loss)
    worst, clipped = 0.0, []
    for r, design in enumerate(model.designs):
        want_losses, norms, want = _reference_run(design, starts[r], schedule, settings.grad_clip, data[r])
        torch.testing.assert_close(torch.stack(losses)[:, r], torch.tensor(want_losses, dtype=torch.float64), **TOL)
        got = model.replicate(model.theta, r)
        for name in want:
            torch.testing.assert_close(got[name], want[name], **TOL, msg=f"replicate {r} ({design}): {name}")
            worst = max(worst, float((got[name] - want[name]).abs().max()))
        clipped += [norm > settings.grad_clip for norm in norms]
    assert any(clipped) and not all(clipped), "the threshold should clip some steps and not others"
    return worst


def _midway(model: ByteModel, data: torch.Tensor) -> float:
    """A clip threshold midway between the middle two of the replicates' first gradient norms: half of them
    are clipped at the first step and half not, whatever the scale of the norms."""
    model.train_step(data[:, :, 0], data[:, :, 1], model.initial_state(BATCH))  # the gradient alone: theta stays
    grads = (model.replicate(model.grad, r).values() for r in range(model.replicates))
    norms = sorted(float(torch.cat([g.flatten() for g in grad]).norm()) for grad in grads)
    return (norms[len(norms) // 2 - 1] + norms[len(norms) // 2]) / 2


def _chunks() -> list[tuple[int, int]]:
    return [(layers, first) for layers in (1, 2, 3) for first in range(0, len(ALL_SWITCHES), CHUNK)]


def _rule(layers: int, first: int) -> tuple[str, int, float]:
    """A rule per group, so that every depth sees every rule and every switch setting several."""
    return RULES[(first // CHUNK + layers) % len(RULES)]


@pytest.mark.parametrize("layers, first", _chunks(), ids=[f"{n}-layers-{i // CHUNK}" for n, i in _chunks()])
def test_design_path_matches_torch_schedulers_and_clipping(layers, first, one_thread):
    """Each design with two replicates (other seeds, other bytes, other norms), each against its own reference."""
    for i, switches in enumerate(ALL_SWITCHES[first:first + CHUNK]):
        design = Design(**switches, n_layers=layers, state_size=3)
        check_against_reference([design, design], [first + i, 100 + first + i], False, _rule(layers, first))


@pytest.mark.parametrize("layers, first", _chunks(), ids=[f"{n}-layers-{i // CHUNK}" for n, i in _chunks()])
def test_superset_path_matches_torch_schedulers_and_clipping(layers, first, one_thread):
    """Sixteen designs of one shape in one superset model, each against its own reference run."""
    designs = [Design(**switches, n_layers=layers, state_size=3) for switches in ALL_SWITCHES[first:first + CHUNK]]
    check_against_reference(designs, list(range(first, first + len(designs))), True, _rule(layers, first))


def test_a_clip_that_never_bites_changes_nothing(one_thread):
    """Scaling by a coefficient clamped to 1 is exact: a threshold above every norm leaves each step bit for bit."""
    design = all_on(n_layers=2, state_size=8)
    data = torch.randint(0, 256, (3, BATCH, STEPS + 1), generator=torch.Generator().manual_seed(3))
    thetas = []
    for clip in (0.0, 1e6):
        model = ByteModel(design, [1, 2, 3])
        opt, states = Adam(model.theta, model.grad, LR), model.initial_state(BATCH)
        for step in range(STEPS):
            _, states = model.train_step(data[:, :, step], data[:, :, step + 1], states)
            optimiser_step(model, opt, Schedule(LR, STEPS), clip, step)
        thetas.append(model.theta)
    assert torch.equal(*thetas)


# --------------------------------------------------------------------------- in the training loop


def _train(root: Path, runs: list, splits, **kwargs) -> list[dict]:
    return train_runs(runs, Text.of_bytes(*splits), [root / run.id for run in runs], CPU, **kwargs)


#: Warm-up to step 12, then a cosine decay; a threshold that clips these runs at about half their steps.
SCHEDULED = {"steps": 30, "lr_schedule": "cosine", "warmup_steps": 12, "min_lr_fraction": 0.2, "grad_clip": 0.6}


@pytest.fixture
def norms(monkeypatch) -> list[torch.Tensor]:
    """The gradient norms before clipping, one per replicate, of each step of the models train.py builds."""
    seen = []

    class Recorded(ByteModel):
        def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
            seen.append(super().clip_grad_norm_(max_norm))
            return seen[-1]

    monkeypatch.setattr(train_mod, "ByteModel", Recorded)
    return seen


def assert_clipped_at_some_steps(norms: list[torch.Tensor]) -> None:
    clipped = torch.cat(norms) > SCHEDULED["grad_clip"]
    assert clipped.any() and not clipped.all()


def test_training_takes_each_steps_rate_and_clip_as_the_loop_by_hand(tmp_path, splits, one_thread, norms):
    """train.py's loop passes each step's own index: its weights equal test_train's independent loop's bit for bit
    (its curve to the rounding of that loop's EMA in Python floats)."""
    (run,) = make_runs([all_on(n_layers=2, state_size=4)], TINY | SCHEDULED)
    _train(tmp_path, [run], splits)
    curve, _, want = reference(run, splits[0])
    got_curve = read_curve(tmp_path / run.id)
    assert [s for s, _ in got_curve] == [s for s, _ in curve]
    assert [e for _, e in got_curve] == pytest.approx([e for _, e in curve], abs=1e-9, rel=0)
    got = weights(tmp_path / run.id)
    assert all(torch.equal(got[name], want[name]) for name in want)
    assert len(norms) == SCHEDULED["steps"]  # one clip a step in train.py's loop
    assert_clipped_at_some_steps(norms)
    _train(tmp_path / "plain", make_runs([run.design], TINY | {"steps": 30}), splits)
    assert read_curve(tmp_path / run.id) != read_curve(tmp_path / "plain" / run.id)


@pytest.mark.parametrize("stop", [10, 20], ids=["mid-warm-up", "mid-decay"])
def test_a_scheduled_clipped_group_resumes_bit_exactly_in_other_groupings(tmp_path, splits, one_thread, norms, stop):
    """Three replicates stopped together at `stop`; resumed as a pair and alone, each equals its calm run."""
    runs = make_runs([all_on(n_layers=2, state_size=8)], TINY | SCHEDULED, replicates=3)
    _train(tmp_path / "calm", runs, splits)
    assert_clipped_at_some_steps(norms)
    root = tmp_path / "stopped"
    event, report = stop_at(stop)
    with pytest.raises(Interrupted, match=f"checkpoint at step {stop}"):
        _train(root, runs, splits, report=report, stop=event)
    _train(root, runs[1:], splits)
    _train(root, runs[:1], splits)
    for run in runs:
        assert_same_run(root / run.id, tmp_path / "calm" / run.id)
        assert _start_steps(root / run.id) == [0, stop]
