"""Text from trained runs (rnnsweep.sample): the run's own model, seeded draws, and the page of samples."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from designs import design
from rnnsweep import cli
from rnnsweep.data import load_split
from rnnsweep.grid import make_runs
from rnnsweep.layout import WEIGHTS
from rnnsweep.sample import SampleSettings, generate, load_run, samples_markdown
from rnnsweep.tokens import Text
from rnnsweep.train import train_run

CPU = torch.device("cpu")
SETTINGS = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-2, eval_bytes=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, splits):
    """A stage folder with two finished runs, and its summary."""
    stage = tmp_path_factory.mktemp("stage1")
    runs = make_runs([design("forget_gate", "new_state"), design("old_state", "residual", n_layers=2)], SETTINGS)
    rows = []
    for run in runs:
        result = train_run(run, Text.of_bytes(*splits), stage / "runs" / run.id, CPU)
        rows.append({**run.row(), **{k: result[k] for k in ("status", "min_loss", "valid_bpb", "test_bpb")}})
    pd.DataFrame(rows).to_csv(stage / "summary.csv", index=False)
    return stage, runs


def test_a_loaded_run_is_the_trained_model(trained):
    stage, runs = trained
    for run in runs:
        model = load_run(stage / "runs" / run.id)
        saved = torch.load(stage / "runs" / run.id / WEIGHTS, weights_only=True)
        got = model.replicate(model.theta, 0)
        assert got.keys() == saved.keys() and all(torch.equal(got[k], saved[k]) for k in saved)


def test_generation_is_seeded_and_cold_sampling_is_greedy(trained):
    stage, runs = trained
    model = load_run(stage / "runs" / runs[0].id)
    text = generate(model, b"abc", 30, 1.0, seed=4)
    assert len(text) == 30 and text == generate(model, b"abc", 30, 1.0, seed=4) != generate(model, b"abc", 30, 1.0, seed=5)
    greedy, states = bytearray(), model.initial_state(1)
    for byte in b"abc":
        logits, states = model.logits(torch.tensor([[byte]]), states)
    for _ in range(30):
        greedy.append(int(logits[0, 0].argmax()))
        logits, states = model.logits(torch.tensor([[greedy[-1]]]), states)
    assert generate(model, b"abc", 30, 1e-6, seed=0) == bytes(greedy)


def test_the_samples_page_continues_the_test_split_with_each_stages_best(trained, data_dir):
    stage, runs = trained
    summary = pd.read_csv(stage / "summary.csv")
    best = summary.sort_values("min_loss")["id"].iloc[0]
    page = samples_markdown({"stage1": stage / "summary.csv"}, data_dir, SampleSettings(50, 0.8, 20, 0))
    prompt = load_split(data_dir, "test")[:20].tobytes().decode("utf-8", errors="replace")
    assert prompt in page and "## stage1" in page and f"Run `{best}`" in page
    assert page == samples_markdown({"stage1": stage / "summary.csv"}, data_dir, SampleSettings(50, 0.8, 20, 0))


def test_sample_command_prints_the_prompt_and_its_continuation(trained, capsysbinary):
    stage, runs = trained
    argv = ["sample", "--run", str(stage / "runs" / runs[1].id), "--prompt", "The ", "--bytes", "12",
            "--temperature", "0.8", "--seed", "3"]
    assert cli.main(argv) == 0
    out = capsysbinary.readouterr().out
    assert out.startswith(b"The ") and len(out) == 4 + 12 + 1


def test_sample_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    argv = ["sample", "--run", str(tmp_path), "--bytes", "5", "--temperature", "1", "--seed", "0"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnsweep sample: error:") and str(tmp_path) in err[0]
