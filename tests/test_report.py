"""The report's front page states the study on disk and what makes it out of date (rnnsweep.report.front_page)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from rnnsweep import config, provenance
from rnnsweep.grid import make_runs, stage1_designs, write_manifest
from rnnsweep.layout import CORPUS_META, DATA_DIR, HEADLINE, manifest_path, summary_path
from rnnsweep.report import FrontPage, front_page

ROOT = Path(__file__).resolve().parents[1]
PROFILE = config.load(ROOT / "configs/default.yaml", ROOT / "configs/smoke.yaml")
SHAS = {"train": "a" * 64, "valid": "b" * 64, "test": "c" * 64}


def _study(tmp_path: Path) -> Path:
    """Stage 1 of the smoke profile on disk: corpus record, manifest, summary and headline, written in that order."""
    study = tmp_path / "smoke"
    (study / DATA_DIR).mkdir(parents=True)
    (study / DATA_DIR / CORPUS_META).write_text(json.dumps({"source": "generated", "total_bytes": 200000, "sha256": "d" * 64,
                                                            "split_sha256": SHAS}))
    block = PROFILE["stage1"]
    runs = make_runs(stage1_designs(block["n_layers"], block["state_sizes"]), block, base_seed=PROFILE["seed"])
    write_manifest(manifest_path(study / "stage1"), runs)
    pd.DataFrame({"id": [r.id for r in runs], "data": provenance.digest_of(SHAS)}).to_csv(summary_path(study / "stage1"), index=False)
    (study / HEADLINE).write_text("stage,runs\nstage1,432\n")
    for age, path in enumerate([manifest_path(study / "stage1"), study / DATA_DIR / CORPUS_META,
                                summary_path(study / "stage1"), study / HEADLINE]):
        os.utime(path, ns=(10**18 + age * 10**9,) * 2)  # a manifest older than the corpus record is normal: grid needs no corpus
    return study


def test_a_study_made_as_configured_is_not_out_of_date(tmp_path):
    facts = front_page(_study(tmp_path), PROFILE, None)
    assert facts["stale"] == []
    assert facts["settings"]["stage1"]["steps"] == PROFILE["stage1"]["steps"] and facts["corpus"]["source"] == "generated"


def test_every_difference_from_the_configuration_and_every_stale_table_is_a_line(tmp_path):
    study = _study(tmp_path)
    os.utime(summary_path(study / "stage1"), ns=(10**18 + 9 * 10**9,) * 2)  # written again after the headline
    pd.DataFrame({"id": ["x"], "data": ["0" * 16]}).to_csv(summary_path(study / "stage1"), index=False)
    asked = {**PROFILE, "corpus": "enwik8", "seed": 7, "stage1": {**PROFILE["stage1"], "lr": 0.5}}
    stale = front_page(study, asked, None)["stale"]
    assert "stage1.lr: the results have 0.001, the configuration asks for 0.5" in stale
    assert any("another base seed than the configuration's (7)" in line for line in stale)
    assert any(line.startswith("stage1: its summary holds runs of other corpus bytes") for line in stale)
    assert "corpus: the results are of generated, the configuration asks for enwik8" in stale
    assert f"{HEADLINE} is older than stage1/summary.csv: run the study again to bring it up to date" in stale


def test_the_front_page_reads_the_study_only_when_the_report_looks_a_fact_up(tmp_path):
    study, hashed = _study(tmp_path), []
    page = FrontPage(study, PROFILE, lambda: hashed.append(1))
    assert json.dumps(page) == "{}" and hashed == []  # what Snakemake does with its config while it runs
    (study / HEADLINE).unlink()  # read at lookup, so a change made before then is what the page shows
    assert page["settings"] == front_page(study, PROFILE, None)["settings"] and page["stages"] == []
    assert hashed == [1] and set(page) == {"stages", "corpus", "settings", "stale"}
