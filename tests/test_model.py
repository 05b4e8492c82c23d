"""The fused engine must compute exactly what the line-by-line reference computes."""

import itertools
import math

import pytest
import torch

from rnnsweep.grid import SWITCHES, Design
from rnnsweep.model import ByteModel, count_params
from rnnsweep.reference import ReferenceModel, load_into_engine

ALL_SWITCHES = [
    dict(zip(SWITCHES, bits))
    for bits in itertools.product((False, True), repeat=len(SWITCHES))
    if bits[4] or bits[5]  # use_new_state or use_old_state
]


def _pair(design: Design) -> tuple[ReferenceModel, ByteModel]:
    torch.manual_seed(0)
    ref = ReferenceModel(design).double()
    engine = ByteModel(design, seed=1).double()
    load_into_engine(ref, engine)
    return ref, engine


def _run(model, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Step through positions with the state carried; return the logits of each step."""
    states = [s.double() for s in model.initial_state(inputs.shape[0], torch.device("cpu"))]
    outs = []
    for j in range(inputs.shape[1]):
        logits, states = model(inputs[:, j], states)
        outs.append(logits.detach())
        assert all(not s.requires_grad for s in states)
    return outs


def test_all_96_combinations_enumerated():
    assert len(ALL_SWITCHES) == 96


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=lambda s: "".join(str(int(v)) for v in s.values()))
def test_engine_matches_reference(switches, n_layers):
    design = Design(**switches, n_layers=n_layers, state_size=6)
    ref, engine = _pair(design)
    assert count_params(ref) == count_params(engine)
    gen = torch.Generator().manual_seed(3)
    data = torch.randint(0, 256, (5, 5), generator=gen)
    ref_out = _run(ref, data)
    eng_out = _run(engine, data)
    for a, b in zip(ref_out, eng_out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=lambda s: "".join(str(int(v)) for v in s.values()))
def test_engine_gradients_match_reference(switches):
    """Map every reference parameter's gradient onto the engine's fused layout and compare."""
    design = Design(**switches, n_layers=2, state_size=5)
    ref, engine = _pair(design)
    gen = torch.Generator().manual_seed(4)
    data = torch.randint(0, 256, (4, 4), generator=gen)
    states_r = [s.double() for s in ref.initial_state(4, torch.device("cpu"))]
    states_e = [s.double() for s in engine.initial_state(4, torch.device("cpu"))]
    for j in range(3):
        ref.zero_grad(set_to_none=True)
        engine.zero_grad(set_to_none=True)
        lr_, states_r = ref(data[:, j], states_r)
        le_, states_e = engine(data[:, j], states_e)
        torch.nn.functional.cross_entropy(lr_, data[:, j + 1]).backward()
        torch.nn.functional.cross_entropy(le_, data[:, j + 1]).backward()
        # Gradients are linear in the weights' layout: load the reference grads as weights.
        grad_ref = ReferenceModel(design).double()
        with torch.no_grad():
            for p, q in zip(grad_ref.parameters(), ref.parameters()):
                p.copy_(q.grad if q.grad is not None else torch.zeros_like(q))
        as_engine = ByteModel(design, seed=0).double()
        load_into_engine(grad_ref, as_engine)
        for (name, want), got in zip(as_engine.named_parameters(), engine.parameters()):
            grad = got.grad if got.grad is not None else torch.zeros_like(got)
            torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-12, msg=name)


def test_initial_distribution_matches_linear():
    """Each fused block is uniform in ±1/sqrt(fan_in) of its own map, like nn.Linear."""
    n = 64
    design = Design(*([True] * 7), n_layers=1, state_size=n)
    cell = ByteModel(design, seed=0).cells[0]
    d = n
    u = 2 * n + d
    expected = {
        "in_w": [(d + n, d + n)],
        "c_w": [(n, d + n), (2 * n, d + 2 * n)],
        "g_h": [(n, d + 2 * n)],
        "f_h": [(n, d + 2 * n)],
        "u_w": [(d, u), (d, d + u)],
        "p_y": [(d, d + u)],
    }
    for name, blocks in expected.items():
        w = getattr(cell, name)
        row = 0
        for rows, fan_in in blocks:
            block = w[row : row + rows]
            bound = 1 / math.sqrt(fan_in)
            assert block.abs().max() <= bound
            assert block.abs().max() > 0.95 * bound  # fills the range, not a narrower one
            assert abs(block.std().item() - bound / math.sqrt(3)) < 0.05 * bound
            row += rows
