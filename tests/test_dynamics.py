"""What trained cells do with time (rnnsweep.dynamics, dynamics_stage): each measure against a case whose answer is
known or against its definition computed the slow way, and a stage's tables and figures from its command."""

from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rnnsweep import cli, dynamics
from rnnsweep.design import SWITCHES, Design
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.layout import DYNAMICS, DYNAMICS_FIGURES, DYNAMICS_RANKED, DYNAMICS_TABLES, manifest_path
from rnnsweep.model import ByteModel, initial_weights
from rnnsweep.reference import ReferenceModel, load_engine_state
from rnnsweep.sample import load_run
from rnnsweep.data import held_out_windows
from rnnsweep.tokens import Text
from rnnsweep.train import train_run
from tests.conftest import worker_args

TINY = dict(steps=40, batch_size=4, history_size=8, log_every=5, lr=3e-3, eval_bytes=200)
#: Every combination of the switches that has a state (new or old), at 1, 2 and 3 layers.
DESIGNS = {layers: [Design(**dict(zip(SWITCHES, bits)), n_layers=layers, state_size=3)
                    for bits in itertools.product((False, True), repeat=len(SWITCHES)) if bits[4] or bits[5]]
           for layers in (1, 2, 3)}


def _model(designs: list[Design], dtype: torch.dtype = torch.float64, seed: int = 0) -> ByteModel:
    return ByteModel(designs, [seed + i for i in range(len(designs))], dtype=dtype, superset=len(set(designs)) > 1)


def test_the_designs_checked_are_every_switch_combination_at_every_depth():
    assert SWITCHES[4:6] == ("use_new_state", "use_old_state")
    assert all(len(set(designs)) == 96 for designs in DESIGNS.values())


def test_memory_at_full_context_is_the_runs_recorded_valid_bpb(tmp_path, splits, one_thread):
    run = make_runs(stage1_designs([2], [4])[37:38], TINY)[0]
    record = train_run(run, Text.of_bytes(*splits), tmp_path / run.id, torch.device("cpu"))
    windows = held_out_windows(splits[1], run.settings.eval_bytes, run.settings.history_size)
    ks = dynamics.context_lengths(run.settings.history_size)
    memory = dynamics.memory_curves(load_run(tmp_path / run.id), windows, ks, np.random.default_rng(0))
    assert ks == [0, 1, 2, 4, 8]
    for variant in dynamics.VARIANTS:
        assert memory[variant][0, -1] == pytest.approx(record["valid_bpb"], rel=1e-6)
    assert memory["zero"][0, 0] != memory["zero"][0, -1]


def _slow_memory(model: ByteModel, windows: np.ndarray, k: int, partner: np.ndarray) -> dict[str, np.ndarray]:
    """The definition, one predicted byte at a time: byte j of a window from its k + 1 bytes, the state at the cut
    zero or the partner window's state there; from the window's start where that is nearer."""
    n, history = windows.shape
    text = torch.from_numpy(windows.astype(np.int64))
    out = {v: np.zeros(model.replicates) for v in dynamics.VARIANTS}
    for w, j in itertools.product(range(n), range(1, history)):
        cut = max(j - 1 - k, 0)
        for variant in dynamics.VARIANTS:
            states = model.initial_state(1)
            if variant == "substituted" and cut > 0:
                for t in range(cut):  # the partner window's state at the cut
                    _, states = model.logits(text[partner[w], t].expand(model.replicates, 1), states)
            for t in range(cut, j):
                logits, states = model.logits(text[w, t].expand(model.replicates, 1), states)
            out[variant] += torch.nn.functional.cross_entropy(logits[:, 0].double(), text[w, j].expand(model.replicates),
                                                              reduction="none").numpy()
    return {v: total / (n * (history - 1)) / math.log(2) for v, total in out.items()}


@pytest.mark.parametrize("design_path", [False, True], ids=["superset restarts", "each design restarts alone"])
def test_memory_curves_are_their_definition_computed_one_byte_at_a_time(splits, design_path, monkeypatch):
    if design_path:
        monkeypatch.setattr(dynamics, "DESIGN_PATH_WIDTH", 1)
    model = _model(DESIGNS[2][::24], seed=3)  # 4 designs of 2 layers in one superset model
    assert len(dynamics._restart_paths(model)) == (4 if design_path else 1)
    windows = held_out_windows(splits[1], 60, 9)
    ks = [0, 1, 3, 6, 9]
    got = dynamics.memory_curves(model, windows, ks, np.random.default_rng(7))
    partner = dynamics.derangement(len(windows), np.random.default_rng(7))
    assert np.all(partner != np.arange(len(windows)))
    for i, k in enumerate(ks):
        want = _slow_memory(model, windows, k, partner)
        for variant in dynamics.VARIANTS:
            np.testing.assert_allclose(got[variant][:, i], want[variant], rtol=1e-10)


@pytest.mark.parametrize("layers", sorted(DESIGNS))
def test_the_state_jacobian_is_the_finite_difference_one_for_every_switch_combination(layers):
    model = _model(DESIGNS[layers])
    dim = layers * 3
    gen = torch.Generator().manual_seed(layers)
    state = torch.randn(model.replicates, 2, dim, generator=gen, dtype=torch.float64) * 0.5  # two pieces side by side
    byte = torch.tensor([65, 10])
    frame = torch.eye(dim, dtype=torch.float64).expand(model.replicates, 2, -1, -1)
    moved, got = dynamics.jacobian_times(model, state, byte, frame)
    eps = 1e-6
    with torch.no_grad():
        torch.testing.assert_close(moved, dynamics.state_step(model, state, byte), rtol=1e-12, atol=1e-15)
        for piece in range(2):
            at, on = state[:, piece:piece + 1].expand(-1, dim, -1), byte[piece].expand(dim)
            up = dynamics.state_step(model, at + eps * frame[:, piece].mT, on)
            down = dynamics.state_step(model, at - eps * frame[:, piece].mT, on)
            want = ((up - down) / (2 * eps)).mT  # (R, dim, dim): column i is dF/ds · e_i
            torch.testing.assert_close(got[:, piece], want, rtol=1e-6, atol=1e-9)


def test_the_superset_jacobian_is_each_designs_own(splits):
    """A design's Jacobian in a superset group is the one it has alone on the design path."""
    designs = DESIGNS[2][5::31]
    group = _model(designs)
    state = torch.rand(len(designs), 1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5
    frame = torch.eye(6, 3, dtype=torch.float64).expand(len(designs), 1, -1, -1)
    _, together = dynamics.jacobian_times(group, state, torch.tensor([101]), frame)
    for r, design in enumerate(designs):
        alone = ByteModel(design, [0], dtype=torch.float64)
        alone.load_replicate(0, group.replicate(group.theta, r))
        _, own = dynamics.jacobian_times(alone, state[r:r + 1], torch.tensor([101]), frame[:1])
        torch.testing.assert_close(together[r:r + 1], own, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("index", [0, 37, 70, 95])
def test_sensitivity_through_time_is_the_reference_models(splits, index):
    """The engine's gradients through the window equal those of the line-by-line model with its state's graph kept."""
    design = DESIGNS[2][index]
    model = _model([design], seed=index)
    ref = load_engine_state(ReferenceModel(design).double(), model.replicate(model.theta, 0))
    windows = held_out_windows(splits[1], 80, 9)
    text = torch.from_numpy(windows.astype(np.int64))
    inputs = [ref.embedded(text[:, t]).detach().requires_grad_() for t in range(text.shape[1] - 1)]
    states = [s.double() for s in ref.initial_state(len(text), torch.device("cpu"))]
    for y in inputs:
        logits, states = ref.step(y, states, detach=False)
    logp = -torch.nn.functional.cross_entropy(logits, text[:, -1], reduction="sum")
    grads = torch.autograd.grad(logp, inputs, allow_unused=True)
    want = [0.0 if g is None else float(g.norm(dim=1).mean()) for g in grads][::-1]
    np.testing.assert_allclose(dynamics.sensitivity(model, windows)[0], want, rtol=1e-9, atol=1e-300)


def test_qr_recovers_the_exponents_of_a_linear_map():
    """For a constant map the exponents are the logs of its eigenvalues' moduli, whatever its (non-normal) form."""
    gen = torch.Generator().manual_seed(3)
    basis = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    moduli = torch.tensor([1.5, 1.0, 0.8, 0.3, 0.05], dtype=torch.float64)
    matrix = basis @ torch.diag(moduli) @ torch.linalg.inv(basis)
    frame = torch.eye(5, 4, dtype=torch.float64)[None]
    got = dynamics.qr_exponents(lambda t, q: matrix @ q, steps=2000, frame=frame, burn_in=100)
    np.testing.assert_allclose(got[0], np.log(moduli[:4].numpy()), atol=2e-3)
    pieces = torch.stack([frame[0], torch.linalg.qr(torch.randn(5, 4, generator=gen, dtype=torch.float64))[0]])[None]
    got = dynamics.qr_exponents(lambda t, q: matrix @ q, steps=2000, frame=pieces, burn_in=100)  # (1, 2, 5, 4)
    np.testing.assert_allclose(got[0], np.log(moduli[:4].numpy()), atol=2e-3)  # two frames side by side agree


def test_a_cell_that_ignores_its_state_has_no_memory_and_no_sensitivity_beyond_lag_0(splits):
    """New state only, no gates: zero the candidate's weights on the old state and nothing of the past reaches the output."""
    design = Design(use_input_gate=False, use_forget_gate=False, use_output_gate=False, use_state_gate=False,
                    use_new_state=True, use_old_state=False, use_residual=True, n_layers=2, state_size=4)
    weights = initial_weights(design, seed=5)
    for i in range(design.n_layers):
        weights[f"cells.{i}.c_w"][:, design.state_size:] = 0  # H reads [x, s]: its s-columns
    model = ByteModel(design, [0], dtype=torch.float64)
    model.load_replicate(0, weights)
    windows = held_out_windows(splits[1], 200, 8)
    found = dynamics.measure(model, windows, [0, 1, 2, 4], splits[1][:60], exponents=4)
    assert found.ks == [0, 1, 2, 4, 8]
    row = found.rows()[0]
    assert row["memory_gain_bits"] == pytest.approx(0, abs=1e-12) and row["memory_horizon"] == 0
    assert found.sensitivity[0, 0] > 0 and np.all(found.sensitivity[0, 1:] == 0)
    assert np.all(found.lyapunov[0] < -100)  # the state map is constant: every direction is lost at once


def test_decay_of_an_exponential_sensitivity():
    tau, lag = dynamics.decay(np.exp(-np.arange(30) / 4.0))
    assert tau == pytest.approx(4.0) and lag == math.ceil(4 * math.log(100))


def test_orbits_are_classified_by_their_period():
    steps = torch.arange(dynamics.MAX_PERIOD + 1, dtype=torch.float64)[:, None]
    fixed = torch.ones(dynamics.MAX_PERIOD + 1, 2)
    cycle = torch.stack([torch.sin(2 * math.pi * steps[:, 0] / 3), torch.cos(2 * math.pi * steps[:, 0] / 3)], 1)
    drifting = steps.expand(-1, 2) * 1e-3
    tails = torch.stack([fixed, cycle, drifting])[None]  # (1, 3, MAX_PERIOD + 1, 2)
    periods = dynamics.period(tails)[0].tolist()
    assert periods == [1, 3, 0]
    assert [dynamics.ending(p) for p in periods] == ["fixed", "cycle", "irregular"]


def test_a_contracting_cell_settles_on_a_fixed_point(splits):
    """Weights scaled down make every layer a contraction: each orbit on a constant byte ends at one point."""
    design = DESIGNS[1][10]
    weights = {name: w * 0.1 for name, w in initial_weights(design, seed=2).items()}
    model = ByteModel(design, [0], dtype=torch.float64)
    model.load_replicate(0, weights)
    tail = dynamics.orbit(model, torch.tensor([32, 101]).repeat_interleave(4), 200, dynamics.MAX_PERIOD + 1)
    assert dynamics.period(tail).tolist() == [[1] * 8]


# ------------------------------------------------------------------ a stage's dynamics, through its commands


@pytest.fixture(scope="module")
def aggregated_stage(tmp_path_factory, data_dir):
    """Eight tiny runs of two shapes, trained and aggregated by the commands the workflow runs."""
    results = tmp_path_factory.mktemp("dynamics") / "results"
    designs = [d for d in stage1_designs([1, 2], [4]) if not d.use_input_gate][::12]
    stage = results / "stage1"
    stage.mkdir(parents=True)
    write_manifest(manifest_path(stage), make_runs(designs, TINY))
    args = worker_args(stage, data_dir)
    summary, curves = stage / "summary.csv", stage / "curves.csv"
    assert cli.main(["aggregate", *args[1:], "--summary", str(summary), "--curves", str(curves)]) == 0
    return stage


def _stage_dynamics(stage, data_dir, *extra: str) -> int:
    return cli.main(["dynamics", "--stage", str(stage), "--data", str(data_dir), "--eval-bytes", "100",
                     "--lyapunov-bytes", "40", "--exponents", "3", "--max-order", "2", *extra])


def _ranked_dynamics(stage, data_dir, *extra: str) -> int:
    return cli.main(["dynamics-ranked", "--stage", str(stage), "--data", str(data_dir), "--best", "3",
                     "--attractor-inputs", "32", "101", "--attractor-starts", "4", "--attractor-steps", "60", *extra])


def test_a_stages_dynamics_tables_and_figures(tmp_path, aggregated_stage, data_dir):
    stage = tmp_path / "stage1"
    shutil.copytree(aggregated_stage, stage)
    assert _stage_dynamics(stage, data_dir) == 0
    assert not any((stage / name).exists() for name in DYNAMICS_RANKED)
    assert _ranked_dynamics(stage, data_dir) == 0
    summary = pd.read_csv(stage / "summary.csv")
    per_run = pd.read_csv(stage / DYNAMICS)
    assert sorted(per_run["id"]) == sorted(summary["id"])
    assert per_run.filter(like="lyapunov_").shape[1] == 3 and (per_run["memory_horizon"] <= 8).all()
    curves = pd.read_csv(stage / "dynamics_curves.csv")
    assert sorted(curves.loc[curves["measure"] == "ngram", "x"]) == [0, 1, 2]
    effects = pd.read_csv(stage / "dynamics_effects.csv")
    assert {"memory_gain_bits", "tau_bytes", "lyapunov_1"} <= set(effects["response"])
    loss = pd.read_csv(stage / "dynamics_loss.csv")
    assert loss["designs"].eq(len(summary)).all() and loss["spearman"].between(-1, 1).all()
    assert pd.read_csv(stage / "attractors.csv")["id"].nunique() == 3
    for name in DYNAMICS_FIGURES:
        out = tmp_path / f"{name}.png"
        assert cli.main(["plot-dynamics", name, "--stage", str(stage), "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_groups_measured_side_by_side_give_the_numbers_of_one_at_a_time(tmp_path, aggregated_stage, data_dir):
    """Three workers split the two shapes into chunks and run them in threads; every measure stays what it is."""
    tables = {}
    for threads in ("1", "3"):
        stage = tmp_path / threads / "stage1"
        shutil.copytree(aggregated_stage, stage)
        assert _stage_dynamics(stage, data_dir, "--threads", threads) == 0
        tables[threads] = pd.read_csv(stage / DYNAMICS).set_index("id").sort_index()
    pd.testing.assert_frame_equal(tables["1"], tables["3"], rtol=1e-5)


def test_the_ranked_part_refuses_measures_of_other_runs(tmp_path, aggregated_stage, data_dir, capsys):
    stage = tmp_path / "stage1"
    shutil.copytree(aggregated_stage, stage)
    assert _ranked_dynamics(stage, data_dir) == 2
    assert "measure the stage's dynamics first" in capsys.readouterr().err
    pd.DataFrame({"id": ["someone-else"], "memory_gain_bits": [0.1]}).to_csv(stage / DYNAMICS, index=False)
    assert _ranked_dynamics(stage, data_dir) == 2
    assert "other runs than the stage's summary lists" in capsys.readouterr().err
    assert not any((stage / name).exists() for name in DYNAMICS_RANKED)


@pytest.mark.parametrize("problem, extra, words", [
    ("no summary", (), "aggregate the stage"),
    ("context beyond the window", ("--contexts", "0", "9"), "context lengths [9]"),
    ("one window", ("--eval-bytes", "8"), "two"),
])
def test_bad_dynamics_input_is_one_line_and_writes_nothing(tmp_path, aggregated_stage, data_dir, capsys, problem,
                                                          extra, words):
    stage = tmp_path / "stage1"
    shutil.copytree(aggregated_stage, stage)
    if problem == "no summary":
        (stage / "summary.csv").unlink()
    before = sorted(p.name for p in stage.iterdir())
    assert _stage_dynamics(stage, data_dir, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnsweep dynamics: error: ") and words in err and err.count("\n") == 1
    assert sorted(p.name for p in stage.iterdir()) == before
    assert not any((stage / name).exists() for name in DYNAMICS_TABLES)


def test_the_command_prints_one_runs_measures_and_refuses_a_folder_without_weights(tmp_path, splits, capsys):
    from rnnsweep.data import prepare_corpus

    data = tmp_path / "results" / "data"
    prepare_corpus("generated", data, cache_dir=tmp_path, generated_bytes=20_000, seed=0)
    run = make_runs(stage1_designs([1], [4])[5:6], TINY)[0]
    folder = tmp_path / "results" / "stage1" / "runs" / run.id
    folder.parent.mkdir(parents=True)
    train_run(run, Text.of_bytes(*splits), folder, torch.device("cpu"))
    assert cli.main(["dynamics", "--run", str(folder), "--lyapunov-bytes", "50"]) == 0
    out = capsys.readouterr().out
    assert "memory_gain_bits" in out and "lyapunov_4" in out and "lyapunov_5" not in out  # 1 layer of 4: 4 exponents
    (folder / "weights.pt").unlink()
    before = sorted(p.name for p in folder.iterdir())
    assert cli.main(["dynamics", "--run", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnsweep dynamics: error: ") and "weights.pt" in err and err.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == before
