"""The published claims tested on a stage summary (rnnsweep.findings): planted truths give the verdicts they must."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rnnsweep import cli, findings
from rnnsweep.design import SWITCHES
from rnnsweep.grid import stage1_designs

#: The published study's picture, planted: each part's on − off effect on the loss (nats), with deep cells worse.
PLANTED = {"use_forget_gate": -0.2, "use_new_state": -0.3, "use_residual": -0.1, "use_old_state": 0.0,
           "use_input_gate": 0.0, "use_output_gate": 0.05, "use_state_gate": 0.0}
THIRD_LAYER = 0.1


def _grid(planted: dict[str, float] = PLANTED, seed: int = 0, noise: float = 0.02) -> pd.DataFrame:
    """A stage-1 summary of the study's grid (its holes included) with the `planted` effects."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in stage1_designs([1, 2, 3], [8, 32]):
        loss = 2.5 + sum(effect * (getattr(d, s) - 0.5) for s, effect in planted.items())
        loss += THIRD_LAYER * (d.n_layers == 3) - 0.2 * (d.state_size == 32) + rng.normal(0, noise)
        row = {s: getattr(d, s) for s in SWITCHES} | {"n_layers": d.n_layers, "state_size": d.state_size}
        rows.append(row | {"id": d.id, "config_id": d.id, "status": "ok", "min_loss": loss, "test_bpb": loss / math.log(2)})
    return pd.DataFrame(rows)


def _verdicts(items: list[findings.Finding]) -> dict[str, str]:
    return {item.statement: item.verdict for item in items}


def test_planted_truths_give_the_published_verdicts():
    verdicts = _verdicts(findings.findings(_grid(), threshold=2.4, order1_bpb=10.0))
    assert set(verdicts.values()) == {findings.SUPPORTED}, verdicts


def test_a_gate_that_helps_contradicts_its_no_help_claim_and_a_weak_part_is_not_strong():
    planted = PLANTED | {"use_input_gate": -0.1, "use_new_state": -0.02, "use_forget_gate": 0.1}
    verdicts = _verdicts(findings.findings(_grid(planted)))
    assert verdicts["The input gate does not help."] == findings.CONTRADICTED
    assert verdicts["New state helps strongly."] == findings.CONTRADICTED
    assert verdicts["The forget gate helps."] == findings.CONTRADICTED


def test_a_noisy_study_cannot_tell_and_says_so():
    verdicts = _verdicts(findings.findings(_grid(PLANTED | {"use_forget_gate": -0.005}, noise=0.5)))
    assert verdicts["The forget gate helps."] == findings.NOT_SHOWN
    assert verdicts["Old state makes little difference."] == findings.NOT_SHOWN


def test_the_memory_claim_needs_the_order1_baseline_and_a_run_below_the_threshold():
    summary = _grid()
    memory = lambda **kw: findings.findings(summary, **kw)[-1]  # noqa: E731
    assert memory(threshold=2.4).verdict == findings.NOT_SHOWN and "--baselines" in memory(threshold=2.4).evidence[0]
    assert memory(threshold=0.5, order1_bpb=10.0).verdict == findings.NOT_SHOWN
    assert memory(threshold=2.4, order1_bpb=1.0).verdict == findings.CONTRADICTED  # runs below it do no better than one byte


def test_a_summary_without_a_column_or_with_too_few_runs_says_why_per_claim():
    summary = _grid().drop(columns=["use_forget_gate"])
    item = findings.findings(summary)[0]
    assert item.verdict == findings.NOT_SHOWN and item.evidence == ["the summary has no column use_forget_gate"]
    few = findings.findings(_grid().head(3))
    assert all(item.verdict == findings.NOT_SHOWN for item in few)
    assert all(len(item.evidence) == 1 and item.evidence[0] for item in few)
    assert "a contrast needs 2" in few[1].evidence[0]


def test_the_command_writes_the_page_and_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    _grid().to_csv(path, index=False)
    assert cli.main(["findings", "--summary", str(path), "--out", str(tmp_path / "findings.md")]) == 0
    page = (tmp_path / "findings.md").read_text()
    assert page.count("\n## ") == 9 and "| The residual helps. | **supported** |" in page
    for bad, content in (("empty.csv", ""), ("noloss.csv", "a,b\n1,2\n"), ("binary.csv", "\x00\xff")):
        (tmp_path / bad).write_text(content)
        capsys.readouterr()
        assert cli.main(["findings", "--summary", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnsweep findings: error: ") and err.count("\n") == 1, err
    assert cli.main(["findings", "--summary", str(tmp_path / "missing.csv")]) == 2


def test_the_published_marginal_is_shown_but_the_holes_do_not_decide():
    """Old state planted at 0: the marginal contrast as published says +0.15 (runs without old state all have the new
    state, which helps), while the matched contrast and the model find nothing, and the verdict follows them."""
    item = next(i for i in findings.findings(_grid()) if i.statement.startswith("Old state"))
    published = float(item.evidence[0].split(": ")[1].split()[0])
    assert published > 0.1 and item.verdict == findings.SUPPORTED


def test_where_the_matched_contrast_and_the_model_disagree_the_study_cannot_tell():
    pairs = {"diff": -0.3, "ci_low": -0.35, "ci_high": -0.25}
    agree, disagree = pd.Series({"ci_low": -0.4, "ci_high": -0.2}), pd.Series({"ci_low": -0.1, "ci_high": 0.05})
    assert findings._judge(findings.STRONGLY, pairs, agree) == (findings.SUPPORTED, [])
    verdict, why = findings._judge(findings.STRONGLY, pairs, disagree)
    assert verdict == findings.NOT_SHOWN and "cannot tell" in why[0]
