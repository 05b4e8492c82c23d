"""The engine and the superset path on a GPU (`pytest -m cuda`; skipped where no CUDA device is present).

benchmarks/gpu.sh runs these on a GPU machine together with the GPU benchmarks.
"""

from __future__ import annotations

import pytest
import torch

from rnnsweep.design import Design
from rnnsweep.tokens import Text
from rnnsweep.train import Interrupted, train_runs
from test_model import ALL_SWITCHES, SWITCH_IDS, check_against_reference
from grouping import DESIGNS, stop_at, superset_runs
from test_train import read_curve, weights

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=SWITCH_IDS)
@pytest.mark.parametrize("superset", [False, True], ids=["design-path", "superset-path"])
def test_engine_matches_reference_on_cuda(switches, n_layers, superset):
    check_against_reference(Design(**switches, n_layers=n_layers, state_size=5), superset, CUDA)


@pytest.mark.parametrize("vocab", [300, 2048])
@pytest.mark.parametrize("superset", [False, True], ids=["design-path", "superset-path"])
def test_engine_matches_reference_over_bpe_ids_on_cuda(superset, vocab):
    check_against_reference(Design(**ALL_SWITCHES[-1], n_layers=2, state_size=5), superset, CUDA, vocab)


def _assert_close_runs(got, want) -> None:
    assert [s for s, _ in read_curve(got)] == [s for s, _ in read_curve(want)]
    assert [e for _, e in read_curve(got)] == pytest.approx([e for _, e in read_curve(want)], rel=1e-4, abs=0)
    for name, value in weights(want).items():
        torch.testing.assert_close(weights(got)[name].cpu(), value.cpu(), rtol=1e-3, atol=1e-4, msg=name)


def test_superset_group_on_cuda_matches_the_cpu_and_each_run_alone(tmp_path, splits):
    runs = superset_runs(DESIGNS)
    on_gpu = train_runs(runs, Text.of_bytes(*splits), [tmp_path / "gpu" / r.id for r in runs], CUDA)
    on_cpu = train_runs(runs, Text.of_bytes(*splits), [tmp_path / "cpu" / r.id for r in runs], torch.device("cpu"))
    alone = [train_runs([r], Text.of_bytes(*splits), [tmp_path / "alone" / r.id], CUDA)[0] for r in runs]
    for run, g, c, a in zip(runs, on_gpu, on_cpu, alone):
        assert g["device"].startswith("cuda") and g["engine"] == "superset"
        for key in ("min_loss", "final_loss", "valid_bpb"):
            assert g[key] == pytest.approx(c[key], rel=1e-4), key  # another device: rounding
            assert a[key] == pytest.approx(g[key], rel=1e-4), key  # other company on the GPU: rounding
        _assert_close_runs(tmp_path / "gpu" / run.id, tmp_path / "cpu" / run.id)


def test_superset_group_resumes_on_cuda(tmp_path, splits):
    runs = superset_runs(DESIGNS, steps=30)
    train_runs(runs, Text.of_bytes(*splits), [tmp_path / "calm" / r.id for r in runs], CUDA)
    dirs = [tmp_path / "stopped" / r.id for r in runs]
    stop, report = stop_at(10)
    with pytest.raises(Interrupted):
        train_runs(runs, Text.of_bytes(*splits), dirs, CUDA, report=report, stop=stop)
    train_runs(runs[:2], Text.of_bytes(*splits), dirs[:2], CUDA)
    train_runs(runs[2:], Text.of_bytes(*splits), dirs[2:], CUDA)
    for run, folder in zip(runs, dirs):
        _assert_close_runs(folder, tmp_path / "calm" / run.id)
