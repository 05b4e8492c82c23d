"""What trained cells do with time (rnnsweep.dynamics): each measure against a case whose answer is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rnnsweep import dynamics
from rnnsweep.grid import SWITCHES, Design, make_runs, stage1_designs
from rnnsweep.model import ByteModel, initial_weights
from rnnsweep.reference import ReferenceModel
from rnnsweep.sample import load_run
from rnnsweep.train import train_run

TINY = dict(steps=40, batch_size=4, history_size=8, log_every=5, lr=3e-3, eval_bytes=200)
DESIGNS = [Design(**dict(zip(SWITCHES, bits)), n_layers=layers, state_size=3)
           for bits in itertools.product((False, True), repeat=len(SWITCHES)) if bits[4] or bits[5]  # new or old state
           for layers in (1, 2, 3)]


def test_the_designs_checked_are_every_switch_combination_at_every_depth():
    assert SWITCHES[4:6] == ("use_new_state", "use_old_state")
    assert len(DESIGNS) == 96 * 3 and len({d for d in DESIGNS}) == 288


def test_memory_at_full_context_is_the_runs_recorded_valid_bpb(tmp_path, splits, one_thread):
    run = make_runs(stage1_designs([2], [4])[37:38], TINY)[0]
    record = train_run(run, *splits, tmp_path / run.id, torch.device("cpu"))
    memory = dynamics.memory(load_run(tmp_path / run.id), splits[1], run.eval_bytes, run.history_size)
    assert memory.ks == [0, 1, 2, 4, 8]
    for variant in dynamics.VARIANTS:
        assert memory.bpb[variant][-1] == pytest.approx(record["valid_bpb"], rel=1e-6)
    assert memory.bpb["zero"][0] != memory.bpb["zero"][-1]


@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: d.id)
def test_the_state_jacobian_is_the_finite_difference_one(design):
    torch.manual_seed(0)
    ref = ReferenceModel(design).double()
    state = torch.randn(design.n_layers * design.state_size, dtype=torch.float64) * 0.5
    byte = torch.tensor(65)
    got = dynamics.jacobian(ref, state, byte)
    step, eps = dynamics.state_map(ref), 1e-6
    with torch.no_grad():
        want = torch.stack([(step(state + eps * e, byte) - step(state - eps * e, byte)) / (2 * eps)
                            for e in torch.eye(len(state), dtype=torch.float64)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_qr_recovers_the_exponents_of_a_linear_map():
    """For a constant map the exponents are the logs of its eigenvalues' moduli, whatever its (non-normal) form."""
    gen = torch.Generator().manual_seed(3)
    basis = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    moduli = torch.tensor([1.5, 1.0, 0.8, 0.3, 0.05], dtype=torch.float64)
    matrix = basis @ torch.diag(moduli) @ torch.linalg.inv(basis)
    got = dynamics.qr_exponents(lambda t: matrix, steps=2000, dim=5, count=4, burn_in=100)
    np.testing.assert_allclose(got, np.log(moduli[:4].numpy()), atol=2e-3)


def test_a_cell_that_ignores_its_state_has_no_memory_and_no_sensitivity_beyond_lag_0(splits):
    """New state only, no gates: zero the candidate's weights on the old state and nothing of the past reaches the output."""
    design = Design(use_input_gate=False, use_forget_gate=False, use_output_gate=False, use_state_gate=False,
                    use_new_state=True, use_old_state=False, use_residual=True, n_layers=2, state_size=4)
    weights = initial_weights(design, seed=5)
    for i in range(design.n_layers):
        weights[f"cells.{i}.c_w"][:, design.state_size:] = 0  # H reads [x, s]: its s-columns
    model = ByteModel(design, [0])
    model.load_replicate(0, weights)
    memory = dynamics.memory(model, splits[1], 200, 8)
    assert memory.gain_bits == pytest.approx(0, abs=1e-9) and memory.horizon == 0
    norms = dynamics.sensitivity(dynamics.reference_of(design, weights, 256), np.asarray(splits[1][:80]).reshape(10, 8))
    assert norms[0] > 0 and np.all(norms[1:] == 0)


def test_decay_of_an_exponential_sensitivity():
    tau, lag = dynamics.decay(np.exp(-np.arange(30) / 4.0))
    assert tau == pytest.approx(4.0) and lag == math.ceil(4 * math.log(100))


def test_the_command_prints_one_runs_measures_and_refuses_a_folder_without_weights(tmp_path, splits, capsys):
    from rnnsweep import cli
    from rnnsweep.data import prepare_corpus

    data = tmp_path / "results" / "data"
    prepare_corpus("generated", data, cache_dir=tmp_path, generated_bytes=20_000, seed=0)
    run = make_runs(stage1_designs([1], [4])[5:6], TINY)[0]
    folder = tmp_path / "results" / "stage1" / "runs" / run.id
    folder.parent.mkdir(parents=True)
    train_run(run, *splits, folder, torch.device("cpu"))
    assert cli.main(["dynamics", "--run", str(folder), "--lyapunov-bytes", "50"]) == 0
    out = capsys.readouterr().out
    assert "memory_gain_bits" in out and "lyapunov_4" in out and "lyapunov_5" not in out  # 1 layer of 4: 4 exponents
    (folder / "weights.pt").unlink()
    before = sorted(p.name for p in folder.iterdir())
    assert cli.main(["dynamics", "--run", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnsweep dynamics: error: ") and "weights.pt" in err and err.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == before
