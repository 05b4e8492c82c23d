"""End to end: the real Snakemake DAG on the smoke profile, in a fresh copy of the checkout."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from rnnsweep import config
from rnnsweep.baselines import COMPRESSORS
from rnnsweep.design import SWITCHES
from rnnsweep.layout import (
    BASELINES, BASELINES_FIGURE, BENCHMARKS_DIR, CORPUS_META, COSTS, CURVES, DATA_DIR, DYNAMICS_FIGURES, DYNAMICS_RANKED, DYNAMICS_REPORTED,
    FIGURE_SUFFIX,
    FINDINGS, HEADLINE, SAMPLES, STAGE_FIGURES,
    STAGE_TABLES, SUMMARY, TABLE_SUFFIX, TOKENIZER, TOKENIZERS, TOKENIZERS_FIGURE, retrained_stage,
)

ROOT = Path(__file__).resolve().parents[1]
STUDY = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())["study"]
RESULTS, FIGURES_DIR = f"results/{STUDY}", f"figures/{STUDY}"
MEASURED = config.load(ROOT / "configs/default.yaml", ROOT / "configs/smoke.yaml")["dynamics"]["stages"]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "configs/smoke.yaml", *args]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def study(tmp_path_factory, copy_checkout) -> Path:
    workdir = copy_checkout(tmp_path_factory.mktemp("study"))
    snakemake(workdir)
    return workdir


@pytest.fixture(scope="module")
def profile() -> dict:
    return config.load(ROOT / "configs/default.yaml", ROOT / "configs/smoke.yaml")


def test_stage1_is_the_full_grid(study, profile):
    summary = pd.read_csv(study / f"{RESULTS}/stage1/summary.csv")
    assert len(summary) == 432
    assert summary["id"].is_unique
    assert set(summary["status"]) <= {"ok", "diverged"}
    assert (summary["steps_done"][summary["status"] == "ok"] == profile["stage1"]["steps"]).all()
    for column in ("id", *SWITCHES, "n_layers", "state_size", "replicate", "seed", "min_loss", "valid_bpb", "params", "wall_s", "steps_per_s", "device"):
        assert column in summary.columns


def test_curves_match_summary(study, profile):
    for stage in ("stage1", "stage2", "stage3"):
        summary = pd.read_csv(study / f"{RESULTS}/{stage}/summary.csv")
        curves = pd.read_csv(study / f"{RESULTS}/{stage}/curves.csv")
        assert list(curves.columns) == ["id", "step", "ema_loss"]
        assert set(curves["id"]) == set(summary["id"])
        minima = curves.groupby("id")["ema_loss"].min()
        ok = summary[summary["status"] == "ok"].set_index("id")
        np.testing.assert_allclose(minima[ok.index], ok["min_loss"], rtol=1e-12)
        every = profile[stage]["log_every"]
        assert (curves["step"] % every == 0).all()


def test_stage2_and_stage3_follow_the_selection_rule(study, profile):
    stage1 = pd.read_csv(study / f"{RESULTS}/stage1/summary.csv")
    stage2 = pd.read_csv(study / f"{RESULTS}/stage2/summary.csv")
    stage3 = pd.read_csv(study / f"{RESULTS}/stage3/summary.csv")
    kept = math.floor(profile["stage2"]["keep_fraction"] * len(stage1))
    best = stage1[stage1["status"] == "ok"].sort_values(["min_loss", "id"]).head(kept)
    assert set(best["id"]) <= set(stage2["id"])  # each kept design is retrained as itself
    assert (stage2["state_size"] == profile["stage2"]["wide_state_size"]).sum() >= kept
    top = profile["stage3"]["top_k"]
    reps = profile["stage3"]["replicates"]
    assert len(stage3) == top * reps
    assert stage3.groupby("config_id")["seed"].nunique().eq(reps).all()
    best2 = stage2[stage2["status"] == "ok"].sort_values(["min_loss", "id"])["config_id"].head(top)
    assert set(stage3["config_id"]) == set(best2)


def test_samples_page_has_each_stage(study):
    page = (study / f"{RESULTS}/stage3/samples.md").read_text()
    assert all(f"## {stage}\n" in page for stage in config.STAGES) and page.count("Run `") == len(config.STAGES)


def test_tables(study):
    regression = pd.read_csv(study / f"{RESULTS}/stage1/regression.csv")
    r2 = regression.loc[regression["term"] == "R2", "coef"].item()
    assert 0 <= r2 <= 1
    groups = pd.read_csv(study / f"{RESULTS}/stage3/groups.csv")
    stage3 = pd.read_csv(study / f"{RESULTS}/stage3/summary.csv")
    means = stage3.groupby("config_id")["min_loss"].mean()
    np.testing.assert_allclose(groups.set_index("config_id")["mean"][means.index], means, rtol=1e-12)


def test_baselines_score_the_runs_bytes(study, profile):
    table = pd.read_csv(study / f"{RESULTS}/{BASELINES}")
    orders = range(profile["baselines"]["max_order"] + 1)
    assert table["method"].tolist() == [f"order-{k} n-gram" for k in orders] + list(COMPRESSORS)
    stage1 = pd.read_csv(study / f"{RESULTS}/stage1/summary.csv")
    assert set(table["data"]) == set(stage1["data"])
    assert (table.loc[table["kind"] == "n-gram", "bytes"] == stage1["test_bytes"].iloc[0]).all()
    assert (table["bpb"] > 0).all()


FIGURE_FILES = [f"{s}/{n}{FIGURE_SUFFIX}" for s, names in STAGE_FIGURES.items() for n in names]


@pytest.mark.parametrize("png", [*FIGURE_FILES, f"{BASELINES_FIGURE}{FIGURE_SUFFIX}"])
def test_every_figure_is_a_real_picture(study, png):
    path = study / FIGURES_DIR / png
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_costs_sum_every_jobs_benchmark_by_rule(study, profile):
    """Every rule's jobs are counted once, from their own benchmark files, and the study's row is their sum."""
    table = pd.read_csv(study / f"{RESULTS}/{COSTS}").set_index("rule")
    files = sorted((study / RESULTS / BENCHMARKS_DIR).glob("*/*.tsv"))
    ran = pd.Series([path.parent.name for path in files]).value_counts()
    assert table.loc["(study)", "jobs"] == len(files) - 1  # all but the costs job itself, written after it
    assert table.drop("(study)")["jobs"].to_dict() == ran.drop("costs").to_dict()
    assert table.loc["train", "jobs"] == profile["workers"] * len(config.STAGES)
    assert table.loc["plot", "jobs"] == len(FIGURE_FILES)
    assert table.loc["(study)", "wall_s"] == pytest.approx(table.drop("(study)")["wall_s"].sum(), abs=0.1 * len(table))
    assert (table["wall_s"] > 0).all() and table.loc["train", "cpu_s"] > 0 and table.loc["train", "peak_rss_mib"] > 50


def test_headline_names_each_stages_best_design(study):
    headline = pd.read_csv(study / f"{RESULTS}/{HEADLINE}").set_index("stage")
    assert list(headline.index) == list(config.STAGES)
    for stage in config.STAGES[:2]:  # one run per design: the best run
        summary = pd.read_csv(study / f"{RESULTS}/{stage}/{SUMMARY}")
        best = summary.loc[summary["min_loss"].idxmin()]
        assert headline.loc[stage, "best_config_id"] == best["config_id"]
        assert headline.loc[stage, "min_loss"] == pytest.approx(best["min_loss"], rel=1e-12)
    groups = pd.read_csv(study / f"{RESULTS}/stage3/groups.csv")
    assert headline.loc["stage3", "best_config_id"] == groups.loc[groups["rank"] == 1, "config_id"].item()


#: Every table and record a study writes, beside its figures: what the report must hold.
REPORTED = [
    *(f"{RESULTS}/{stage}/{name}" for stage in STAGE_FIGURES for name in (SUMMARY, CURVES)),
    *(f"{RESULTS}/{stage}/{name}{TABLE_SUFFIX}" for stage, names in STAGE_TABLES.items() for name in names),
    f"{RESULTS}/{config.STAGES[-1]}/{SAMPLES}", f"{RESULTS}/{BASELINES}", f"{RESULTS}/{HEADLINE}", f"{RESULTS}/{FINDINGS}",
    f"{RESULTS}/{COSTS}",
    f"{RESULTS}/{DATA_DIR}/{CORPUS_META}",
    *(f"{FIGURES_DIR}/{png}" for png in [*FIGURE_FILES, f"{BASELINES_FIGURE}{FIGURE_SUFFIX}"]),
    *(f"{RESULTS}/{stage}/{name}" for stage in MEASURED for name in DYNAMICS_REPORTED),
    *(f"{FIGURES_DIR}/{stage}/{name}{FIGURE_SUFFIX}" for stage in MEASURED for name in DYNAMICS_FIGURES),
]


def test_report_holds_every_figure_and_table_with_a_caption_and_the_headline(study):
    snakemake(study, "--report", "report.html")
    page = (study / "report.html").read_text()
    entries = dict(re.findall(r'"((?:results|figures)/[^"]+)": \{"name": "[^"]*", "filename": "[^"]*", '
                              r'"labels": [^,]*, "size": "[^"]*", "caption": "((?:[^"\\]|\\.)*)"', page))
    assert sorted(entries) == sorted(REPORTED)
    assert all(len(caption) > 80 for caption in entries.values()), "every result has a caption"
    front = json.loads(page.split("workflow_desc = ", 1)[1].split("\n", 1)[0].rstrip(";"))
    corpus = json.loads((study / f"{RESULTS}/{DATA_DIR}/{CORPUS_META}").read_text())
    assert corpus["sha256"] in front and f"study <tt class=\"docutils literal\">{STUDY}</tt>" in front
    for row in pd.read_csv(study / f"{RESULTS}/{HEADLINE}").itertuples():
        assert f"{row.stage}</strong>: {row.runs} runs, {row.diverged} diverged" in front
        assert html.escape(row.best_design) in front and f"{row.min_loss:.4f}" in front
    assert "out of date" not in front


def _front_page(study: Path, *args: str) -> str:
    snakemake(study, *args, "--report", "front.html")
    page = (study / "front.html").read_text()
    return html.unescape(re.sub("<[^>]+>", "", json.loads(page.split("workflow_desc = ", 1)[1].split("\n", 1)[0].rstrip(";"))))


def test_the_report_states_the_study_on_disk_and_says_what_the_command_line_would_change(study, profile):
    """Asked with other values than the study's, the page still states the study's own and marks itself out of date."""
    front = _front_page(study, "--config", "stage1={steps: 999}", "seed=7")
    steps = profile["stage1"]["steps"]
    assert f"{steps} steps" in front and "999 steps" not in front  # the settings are the manifests'
    assert "This report is out of date" in front
    assert f"stage1.steps: the results have {steps}, the configuration asks for 999" in front
    assert "derive from another base seed than the configuration's (7)" in front
    assert "This report is out of date" not in _front_page(study)


def test_a_report_after_a_partial_rerun_says_which_tables_are_older(study):
    """A stage's summary written again (here: touched) after the headline: the headline is out of date."""
    summary = study / f"{RESULTS}/stage1/{SUMMARY}"
    headline = study / f"{RESULTS}/{HEADLINE}"
    before = summary.stat()
    os.utime(summary, ns=(before.st_atime_ns, headline.stat().st_mtime_ns + 10**9))
    try:
        front = _front_page(study)
        assert f"{HEADLINE} is older than stage1/{SUMMARY}" in front
    finally:
        os.utime(summary, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_rerun_does_nothing_and_one_figure_rerenders(study):
    assert "Nothing to be done" in snakemake(study, "-n").stdout + snakemake(study, "-n").stderr
    target = study / FIGURES_DIR / "stage1/swarm_all.png"
    other = study / FIGURES_DIR / "stage1/loss_curves.png"
    before, other_before = target.stat().st_mtime_ns, other.stat().st_mtime_ns
    done = snakemake(study, "-f", f"{FIGURES_DIR}/stage1/swarm_all.png")
    log = done.stdout + done.stderr
    assert log.count("rule plot:") == 1 and "figure=swarm_all" in log
    assert target.stat().st_mtime_ns > before
    assert other.stat().st_mtime_ns == other_before


def _job_counts(plan: str) -> dict[str, int]:
    """`snakemake -n`'s job stats: rule -> jobs it would run."""
    stats = plan.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}


def test_another_rank_by_selects_again_and_redraws_only_what_ranks(study):
    """rank_by is in what selection is made from: stages 2 and 3 are chosen and trained again; in stage 1 nothing is
    trained and only the figure that marks the best run is redrawn."""
    plan = snakemake(study, "-n", "--config", "rank_by=valid_bpb")
    counts = _job_counts(plan.stdout)
    assert counts["select"] == 2 and "grid" not in counts and "corpus" not in counts
    outputs = [path for line in re.findall(r"output: (.+)", plan.stdout) for path in line.split(", ")]
    stage1 = [path for path in outputs if "/stage1/" in path]
    ranked = [f"{RESULTS}/stage1/{name}" for name in DYNAMICS_RANKED]
    redrawn = [f"{FIGURES_DIR}/stage1/{name}{FIGURE_SUFFIX}" for name in ("loss_curves", *DYNAMICS_FIGURES)]
    assert sorted(stage1) == sorted([*ranked, *redrawn]), stage1  # and no run is measured again


def _results(study: Path, stage: str) -> dict[str, tuple[int, str]]:
    """Each finished run of a stage: when its result was written, and its fingerprint."""
    return {
        path.parent.name: (path.stat().st_mtime_ns, json.loads(path.read_text())["fingerprint"])
        for path in (study / RESULTS / stage / "runs").glob("*/result.json")
    }


def test_a_damaged_file_of_each_kind_heals_to_the_untouched_tables(study):
    """tools/damage_injection.py, three edits: a run's file, a stage table, a corpus file (docs/usage.md: A damaged file)."""
    spec = importlib.util.spec_from_file_location("damage_injection", ROOT / "tools/damage_injection.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    report = tool.main(["--edits", "3", "--seed", "2", "--study", str(study)])
    assert list(report["rc"]) == [0, 0, 0], report.to_string()
    assert list(report["differs"]) == ["", "", ""], report.to_string()
    assert report.loc[0, "file"].split("/")[1] == "runs" and report.loc[0, "retrained"] == 1


def test_the_bpe_comparison_trains_the_last_stage_again_and_a_new_vocabulary_retrains_only_it(study):
    """Run last in this file: it adds the comparison to the study the tests above read."""
    stages = config.STAGES
    before = {stage: _results(study, stage) for stage in stages}
    retrained = retrained_stage(stages[-1], "bpe")
    assert not (study / RESULTS / DATA_DIR / TOKENIZER).exists(), "a byte study learns no vocabulary"
    snakemake(study, "--config", "compare_tokenizers=true", "vocab_size=300")
    last = pd.read_csv(study / RESULTS / stages[-1] / SUMMARY)
    again = pd.read_csv(study / RESULTS / retrained / SUMMARY)
    same = ["id", "config_id", "seed", "steps", "batch_size", "history_size", "eval_bytes", "engine"]
    pd.testing.assert_frame_equal(again[same], last[same])
    assert set(again["tokenizer"]) == {"bpe"} and set(again["vocab_size"]) == {300}
    assert (again["test_bytes"] > again["test_tokens"]).all() and (last["test_bytes"] == last["test_tokens"]).all()
    table = pd.read_csv(study / RESULTS / TOKENIZERS)
    assert sorted(table.groupby("config_id")["tokenizer"].agg(sorted)) == [["bpe", "bytes"]] * last["config_id"].nunique()
    both = set(last.loc[last["status"] == "ok", "id"]) & set(again.loc[again["status"] == "ok", "id"])
    assert table.groupby("config_id")["n"].max().to_dict() == last[last["id"].isin(both)].groupby("config_id").size().to_dict()
    pixels = matplotlib.image.imread(study / FIGURES_DIR / f"{TOKENIZERS_FIGURE}{FIGURE_SUFFIX}")
    assert pixels.shape[0] > 300 and pixels[..., :3].std() > 0.05
    assert {stage: _results(study, stage) for stage in stages} == before, "the byte runs must not train again"

    first = _results(study, retrained)
    snakemake(study, "--config", "compare_tokenizers=true", "vocab_size=320")
    second = _results(study, retrained)
    assert first.keys() == second.keys()
    assert all(second[run][0] > first[run][0] and second[run][1] != first[run][1] for run in first)
    for run, (_, fingerprint) in first.items():  # the results of the old vocabulary are kept aside
        assert (study / RESULTS / retrained / "runs" / run / "superseded" / fingerprint / "result.json").is_file()
    assert set(pd.read_csv(study / RESULTS / TOKENIZERS).query("tokenizer == 'bpe'")["vocab_size"]) == {320}
    assert {stage: _results(study, stage) for stage in stages} == before, "the byte runs must not train again"
