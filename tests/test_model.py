"""The hand-written engine must compute exactly what the line-by-line reference computes (rnnsweep.model, optim)."""

import itertools
import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from designs import all_on, design
from rnnsweep.design import SWITCHES, Design
from rnnsweep.grid import stage1_designs
from rnnsweep.model import ByteModel, LayerParams
from rnnsweep.plan import count_params, plan
from rnnsweep.optim import Adam
from rnnsweep.reference import ReferenceModel, engine_state

_EVERY_SETTING = [dict(zip(SWITCHES, bits)) for bits in itertools.product((False, True), repeat=len(SWITCHES))]
ALL_SWITCHES = [s for s in _EVERY_SETTING if s["use_new_state"] or s["use_old_state"]]
SWITCH_IDS = lambda s: "".join(str(int(v)) for v in s.values())  # noqa: E731
TOL = dict(rtol=1e-12, atol=1e-12)


def test_the_engine_tests_cover_exactly_the_designs_the_grid_makes():
    """The grid's switch settings at one shape are these 96, and Design refuses the 32 others (no state at all)."""
    made = {tuple(getattr(d, s) for s in SWITCHES) for d in stage1_designs([1], [8])}
    covered = {tuple(setting[s] for s in SWITCHES) for setting in ALL_SWITCHES}
    assert made == covered and len(made) == 96
    for setting in _EVERY_SETTING:
        if tuple(setting[s] for s in SWITCHES) not in made:
            with pytest.raises(ValueError, match="use_new_state or use_old_state"):
                Design(**setting, n_layers=1, state_size=8)


def _companion(design: Design) -> Design:
    """Another design of the same shape: every switch flipped, with the new/old-state rule kept."""
    flipped = {k: not getattr(design, k) for k in SWITCHES}
    if not (flipped["use_new_state"] or flipped["use_old_state"]):
        flipped["use_new_state"] = True
    return design.replace(**flipped)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=SWITCH_IDS)
@pytest.mark.parametrize("superset", [False, True], ids=["design-path", "superset-path"])
def test_engine_matches_reference(switches, n_layers, superset):
    check_against_reference(Design(**switches, n_layers=n_layers, state_size=5), superset, torch.device("cpu"))


@pytest.mark.parametrize("vocab", [2, 300, 1024])
@pytest.mark.parametrize("cell", [all_on(2, 5), design("new_state", n_layers=1, state_size=3)], ids=["all-on", "bare"])
@pytest.mark.parametrize("superset", [False, True], ids=["design-path", "superset-path"])
def test_engine_matches_reference_over_another_vocabulary(cell, superset, vocab):
    """Token ids instead of bytes: the lookup table and the output map have `vocab` rows, nothing else changes."""
    check_against_reference(cell, superset, torch.device("cpu"), vocab)


def check_against_reference(design: Design, superset: bool, device: torch.device, vocab: int = 256) -> None:
    """Logits, loss, next state and every parameter's gradient, over steps with the state carried, in float64.

    The reference sits in replicate 1 of two, so the replicate offsets are
    exercised too; replicate 0 gets other weights and other symbols and, on the
    superset path, the design with every switch the other way.
    """
    torch.manual_seed(0)
    ref = ReferenceModel(design, vocab).double().to(device)
    designs = [_companion(design) if superset else design, design]
    engine = ByteModel(designs, seeds=[7, 1], device=device, dtype=torch.float64, superset=superset, vocab=vocab)
    engine.load_replicate(1, engine_state(ref))
    assert count_params(design, vocab) == sum(p.numel() for p in ref.parameters())
    if not superset:
        assert engine.theta.numel() == 2 * count_params(design, vocab)

    data = torch.randint(0, vocab, (2, 4, 5), generator=torch.Generator().manual_seed(4)).to(device)
    states_r = [s.double() for s in ref.initial_state(4, device)]
    states_e = engine.initial_state(4)
    for j in range(data.shape[2] - 1):
        ref.zero_grad(set_to_none=True)
        logits_r, next_r = ref(data[1, :, j], states_r)
        loss_r = F.cross_entropy(logits_r, data[1, :, j + 1])
        loss_r.backward()

        logits_e, _ = engine.logits(data[:, :, j], states_e)
        assert logits_e.shape == (2, 4, vocab)
        loss_e, states_e = engine.train_step(data[:, :, j], data[:, :, j + 1], states_e)
        torch.testing.assert_close(logits_e[1], logits_r.detach(), **TOL)
        torch.testing.assert_close(loss_e[1], loss_r.detach(), **TOL)
        assert loss_e.shape == (2,)
        for got, want in zip(states_e, next_r):
            torch.testing.assert_close(got[1], want, **TOL)
        want = engine_state(ref, grads=True)
        got = engine.replicate(engine.grad, 1)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], **TOL, msg=f"step {j}: gradient of {name}")
        states_r = next_r


def test_the_layer_weights_named_for_transposition_are_the_plans_matrices():
    """LayerParams.WEIGHTS states which fields forward takes transposed: exactly the layer's matrices in the plan."""
    layer = {p.name.removeprefix("cells.0."): p for p in plan(all_on(n_layers=1, state_size=4)) if p.name.startswith("cells.0.")}
    assert set(layer) == {f.name for f in fields(LayerParams)}
    assert set(LayerParams.WEIGHTS) == {name for name, p in layer.items() if len(p.shape) == 2}


def test_replicate_initialisation_depends_only_on_its_seed():
    """What makes a run's curve the same alone and in a group: replicate r starts from seed r's weights."""
    design = all_on(n_layers=2, state_size=6)
    group = ByteModel(design, seeds=[3, 5, 3])
    alone = ByteModel(design, seeds=[5])
    first, second, third = (group.replicate(group.theta, r) for r in range(3))
    solo = alone.replicate(alone.theta, 0)
    for name in solo:
        assert torch.equal(second[name], solo[name]), name
        assert torch.equal(first[name], third[name]), name
    assert any(not torch.equal(first[name], second[name]) for name in solo)


def test_initial_distribution_matches_linear():
    """Each fused block is uniform in ±1/sqrt(fan_in) of its own map, like the reference's nn.Linear.

    The blocks and their fan_ins come from `plan`; the reference, mapped into
    the same layout, confirms that each block's range is that of the map it
    really comes from.
    """
    n = 64
    design = all_on(n_layers=1, state_size=n)
    engine = ByteModel(design, seeds=[0])
    torch.manual_seed(0)
    reference = engine_state(ReferenceModel(design))
    weights = engine.replicate(engine.theta, 0)
    assert weights.keys() == reference.keys() == {p.name for p in plan(design)}
    for param in plan(design):
        assert sum(rows for _, rows, _ in param.blocks) == param.shape[0], param.name
        row = 0
        for _, rows, fan_in in param.blocks:
            bound = 1 / math.sqrt(fan_in)
            block, ref_block = weights[param.name][row : row + rows], reference[param.name][row : row + rows]
            where = f"{param.name} rows {row}:{row + rows}"
            assert block.abs().max() <= bound, where
            assert ref_block.abs().max() <= bound * (1 + 1e-6), where
            if block.dim() == 2:  # thousands of values: the range is filled, the spread is uniform's
                assert block.abs().max() > 0.95 * bound, where
                assert ref_block.abs().max() > 0.95 * bound, where
                assert abs(block.std().item() - bound / math.sqrt(3)) < 0.05 * bound, where
            else:
                assert block.abs().max() > 0.8 * bound, where
            row += rows


def test_superset_starts_each_design_where_its_own_model_starts():
    """A design's initial weights are the same on both paths, so the two paths differ only by rounding."""
    designs = [Design(**switches, n_layers=2, state_size=4) for switches in ALL_SWITCHES[::7]]
    group = ByteModel(designs, seeds=list(range(len(designs))), superset=True)
    for r, one in enumerate(designs):
        alone = ByteModel(one, seeds=[r])
        got, want = group.replicate(group.theta, r), alone.replicate(alone.theta, 0)
        assert got.keys() == want.keys() == {p.name for p in plan(one)}
        assert all(torch.equal(got[k], want[k]) for k in want), one


def test_switched_off_parameters_never_move_and_are_not_the_designs():
    """Parts a design lacks hold 0, get a gradient of exactly 0 and stay 0 under Adam; weights and
    `params` are the design's own. Counted from the buffers, not through the placement code: each
    replicate's slice of `theta` holds exactly count_params(design) nonzero values, always the same ones."""
    designs = [Design(**switches, n_layers=2, state_size=4) for switches in ALL_SWITCHES[::5]]
    model = ByteModel(designs, seeds=list(range(len(designs))), superset=True)
    opt = Adam(model.theta, model.grad, lr=1e-2)
    owned = model.theta.ne(0)
    counts = [int(part.sum()) for part in _replicate_slices(model, owned)]
    assert counts == [count_params(d) for d in designs]
    data = torch.randint(0, 256, (len(designs), 8, 12), generator=torch.Generator().manual_seed(1))
    states = model.initial_state(8)
    for j in range(data.shape[2] - 1):
        _, states = model.train_step(data[:, :, j], data[:, :, j + 1], states)
        assert not model.grad[~owned].any(), f"step {j}: a switched-off part got a gradient"
        opt.step()
    assert torch.equal(model.theta.ne(0), owned) and not opt.exp_avg[~owned].any()
    for r, one in enumerate(designs):
        weights = model.replicate(model.theta, r)
        assert sum(t.numel() for t in weights.values()) == count_params(one)


def _replicate_slices(model: ByteModel, flat: torch.Tensor) -> list[torch.Tensor]:
    """Replicate r's entries of a buffer laid out like `theta` (the replicate axis sits inside each parameter)."""
    views = model.views(flat)
    return [torch.cat([view[r].reshape(-1) for view in views.values()]) for r in range(model.replicates)]


def _grads(steps: int, size: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(size, generator=gen) * 10.0 ** torch.randint(-4, 2, (size,), generator=gen) for _ in range(steps)]


@pytest.mark.parametrize("fused", [True, False], ids=["fused-bit-for-bit", "default-to-rounding"])
def test_adam_is_torch_adam(fused):
    """Our call of the fused kernel is torch.optim.Adam(fused=True) exactly, and the default Adam to rounding."""
    theta = torch.randn(1000, generator=torch.Generator().manual_seed(6))
    start = theta.clone()
    grad = torch.zeros_like(theta)
    ours = Adam(theta, grad, lr=1e-3)
    param = torch.nn.Parameter(theta.clone())
    theirs = torch.optim.Adam([param], lr=1e-3, fused=fused)
    for g in _grads(6, theta.numel()):
        grad.copy_(g)
        ours.step()
        param.grad = g.clone()
        theirs.step()
        if not fused:
            torch.testing.assert_close(theta, param.detach(), rtol=1e-6, atol=1e-7)
            continue
        state = theirs.state[param]
        assert torch.equal(theta, param.detach())
        assert torch.equal(ours.exp_avg, state["exp_avg"])
        assert torch.equal(ours.exp_avg_sq, state["exp_avg_sq"])
        assert ours.steps.item() == state["step"].item()
    assert (theta - start).abs().max() > 1e-3  # six steps of lr 1e-3 moved it
