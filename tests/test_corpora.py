"""Several corpora in one study: their names, the rank agreement and switch effects between their studies
(rnnsweep.corpora), the `corpora` command, and the workflow that gives each corpus a study of its own.
Expectations are recomputed here with scipy and plain sets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from rnnsweep import corpora, effects
from rnnsweep.aggregate import write_csv
from rnnsweep.cli import main
from rnnsweep.config import STAGES
from rnnsweep.data import DataError, NAMED_CORPORA, corpora as corpus_names
from rnnsweep.grid import make_runs, stage1_designs
from rnnsweep.layout import CORPORA_TABLE, CORPUS_EFFECTS, CORPUS_META, DATA_DIR, corpus_study, study_dir, summary_path

SETTINGS = dict(steps=30, batch_size=8, history_size=16, log_every=5, lr=0.001, eval_bytes=32)
FIRST = STAGES[0]


def _summary(seed: int, shared: dict, spread: float, forget: float) -> pd.DataFrame:
    """Stage 1 of one corpus: every design of one shape, its loss a quality shared by every corpus plus this
    corpus's own part (`spread` wide) and the forget gate's effect, two seeds each."""
    rng = np.random.default_rng(seed)
    runs = make_runs(stage1_designs([1], [4]), SETTINGS, replicates=2)
    own = {design: rng.normal(0, spread) for design in shared}
    frame = pd.DataFrame([run.row() for run in runs])
    frame["status"] = "ok"
    frame["min_loss"] = [shared[run.design] + own[run.design] + forget * run.design.use_forget_gate
                         + rng.normal(0, 0.01) for run in runs]
    frame["valid_bpb"] = frame["test_bpb"] = frame["min_loss"] / np.log(2)
    return frame


@pytest.fixture(scope="module")
def studies() -> dict[str, pd.DataFrame]:
    """Two corpora whose rankings agree in part, and whose forget gates help by different amounts."""
    designs = {run.design for run in make_runs(stage1_designs([1], [4]), SETTINGS)}
    rng = np.random.default_rng(7)
    shared = {design: rng.normal(2.0, 0.1) for design in sorted(designs, key=str)}
    return {"prose": _summary(1, shared, 0.05, -0.2), "code": _summary(2, shared, 0.05, -0.1)}


def test_corpora_are_named_by_name_or_file_stem_and_refused_when_missing_or_alike(tmp_path):
    files = [tmp_path / "Also sprach.txt", tmp_path / "2024.py", tmp_path / "other" / "Also sprach.md"]
    for path in files:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"text")
    assert corpus_names("generated") == {"generated": "generated"}
    assert corpus_names([NAMED_CORPORA[0], str(files[0]), str(files[1])]) == {
        NAMED_CORPORA[0]: NAMED_CORPORA[0], "Also_sprach": str(files[0]), "c_2024": str(files[1])}
    with pytest.raises(DataError, match=r"^corpus: .*missing\.txt is not a file"):
        corpus_names(["generated", str(tmp_path / "missing.txt")])
    with pytest.raises(DataError, match="would both be called 'Also_sprach'"):
        corpus_names([str(files[0]), str(files[2])])


def test_stage1_agreement_is_spearman_its_interval_and_the_shared_top_of_the_design_means(studies):
    frame = pd.concat([s.assign(corpus=name) for name, s in studies.items()], ignore_index=True)
    table = corpora.agreement({FIRST: frame})
    assert len(table) == 1
    row = table.iloc[0]
    means = {name: s.groupby(s["config_id"].str.partition("@")[0])["min_loss"].mean() for name, s in studies.items()}
    a, b = means["code"], means["prose"].loc[means["code"].index]  # pairs of values in sorted order
    assert (row.stage, row.axis, row.value_a, row.value_b, row.designs) == (FIRST, "corpus", "code", "prose", 96)
    assert row.spearman == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert row.ci_low < row.spearman < row.ci_high
    assert row.top_shared == len(set(a.nsmallest(9).index) & set(b.nsmallest(9).index))
    assert 0.5 < row.spearman < 0.99, "the two corpora were made to agree in part"
    assert (row.best_a, row.best_b) == (a.idxmin(), b.idxmin())


def test_a_later_stage_compares_only_the_designs_both_corpora_selected(studies):
    kept = {name: s[s["config_id"].isin(s["config_id"].unique()[: 40 if name == "code" else 60][20:])]
            for name, s in studies.items()}  # code keeps designs 20-39, prose 20-59: 20 in common
    frame = pd.concat([s.assign(corpus=name) for name, s in kept.items()], ignore_index=True)
    assert corpora.agreement({STAGES[1]: frame}).iloc[0].designs == 20


def test_switch_effects_set_each_corpus_beside_the_other_and_say_where_they_agree(studies):
    tables = {name: effects.marginals(s) for name, s in studies.items()}
    wide = corpora.switch_effects(tables).set_index(["response", "switch"])
    for name, table in tables.items():
        main_rows = table[table["within"].fillna("") == ""].set_index(["response", "switch"])
        assert wide[f"diff_{name}"].to_dict() == main_rows["diff"].to_dict()
    forget = wide.loc[("min_loss", "forget_gate")]
    assert forget["diff_prose"] == pytest.approx(-0.2, abs=0.03) and forget["diff_code"] == pytest.approx(-0.1, abs=0.03)
    assert forget["same_sign"] and forget["all_found"]
    signs = np.sign(wide[["diff_prose", "diff_code"]])
    assert wide["same_sign"].tolist() == (signs["diff_prose"] == signs["diff_code"]).tolist()


def _write_study(folder, summary: pd.DataFrame) -> None:
    write_csv(summary, summary_path(folder / FIRST))
    write_csv(effects.marginals(summary), folder / FIRST / corpora.MARGINALS)


def test_the_command_writes_both_tables_and_the_figure_and_refuses_a_single_study(tmp_path, studies):
    folders = {name: tmp_path / name for name in studies}
    for name, summary in studies.items():
        _write_study(folders[name], summary)
    out = {"table": tmp_path / CORPORA_TABLE, "effects": tmp_path / CORPUS_EFFECTS, "figure": tmp_path / "corpora.png"}
    words = [word for name, folder in folders.items() for word in ("--study", name, str(folder))]
    assert main(["corpora", *words, "--out", str(out["table"]), "--effects", str(out["effects"]),
                 "--figure", str(out["figure"])]) == 0
    table = pd.read_csv(out["table"])
    assert table["stage"].tolist() == [FIRST] and table["designs"].tolist() == [96]
    assert "diff_prose" in pd.read_csv(out["effects"]).columns
    assert out["figure"].stat().st_size > 10_000
    for path in out.values():
        path.unlink()
    assert main(["corpora", *words[:3], "--out", str(out["table"]), "--effects", str(out["effects"]),
                 "--figure", str(out["figure"])]) == 2
    assert not any(path.exists() for path in out.values())


def _snakemake(workdir, corpus: str, *targets: str, dry: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", "configs/smoke.yaml", "--config", "study=two",
         f"corpus={corpus}", "--cores", "1", *(["-n"] if dry else []), *targets],
        cwd=workdir, capture_output=True, text=True, timeout=300)


def test_the_workflow_gives_each_corpus_its_own_study_and_compares_them(tmp_path, copy_checkout):
    workdir = copy_checkout(tmp_path)
    text = tmp_path / "zarathustra.txt"
    text.write_bytes(bytes(range(256)) * 400)
    corpus = f"[generated, {text}]"
    dry = _snakemake(workdir, corpus, dry=True)
    assert dry.returncode == 0, dry.stderr[-2000:]
    for name in ("generated", "zarathustra"):
        assert f"rule {name}_train:" in dry.stdout and f"{study_dir(corpus_study('two', name))}/stage3/summary.csv" in dry.stdout
    assert "rule corpora:" in dry.stdout and f"{study_dir('two')}/{CORPORA_TABLE}" in dry.stdout
    # Each corpus's first job really runs, as a module's job, on its own corpus.
    metas = [f"{study_dir(corpus_study('two', name))}/{DATA_DIR}/{CORPUS_META}" for name in ("generated", "zarathustra")]
    done = _snakemake(workdir, corpus, *metas)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads((workdir / meta).read_text())["total_bytes"] for meta in metas] == [200_000, 102_400]
