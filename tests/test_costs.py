"""rnnsweep.costs: benchmark records summed by rule, unmeasured values left out of the sums they cannot join."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rnnsweep.cli import main
from rnnsweep.costs import COLUMNS, TOTAL

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _record(folder: Path, rule: str, job: str, s: float, rss: str, cpu: str) -> None:
    path = folder / rule / f"{job}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:01\t{rss}\t1.0\t1.0\t1.0\t0.0\t0.0\t0.0\t{cpu}\n")


def test_costs_sum_jobs_by_rule_and_in_all(tmp_path):
    bench = tmp_path / "benchmarks"
    _record(bench, "train", "stage1-0", 10.0, "300.5", "19.0")
    _record(bench, "train", "stage1-1", 12.0, "350.0", "21.0")
    _record(bench, "plot", "stage1-swarm", 2.0, "-", "-")  # too short to be sampled
    out = tmp_path / "costs.csv"
    assert main(["costs", "--benchmarks", str(bench), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    rows = {line.split(",")[0]: line.split(",")[1:] for line in lines[1:]}
    assert list(rows) == ["train", "plot", TOTAL]  # the most expensive first, the study last
    assert rows["train"] == ["2", "22.0", "40.0", "350.0"]
    jobs, wall, cpu, rss = rows["plot"]
    assert (jobs, wall) == ("1", "2.0") and cpu in ("0.0", "") and math.isnan(float(rss or "nan"))
    assert rows[TOTAL] == ["3", "24.0", "40.0", "350.0"]


def test_no_benchmarks_make_an_empty_table(tmp_path):
    out = tmp_path / "costs.csv"
    assert main(["costs", "--benchmarks", str(tmp_path / "none"), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)


@pytest.mark.parametrize("bad", ["s\tcpu_time\nabc\t1\n", "not a table"])
def test_a_damaged_record_is_one_line_and_exit_2(tmp_path, capsys, bad):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.tsv").write_text(bad)
    assert main(["costs", "--benchmarks", str(tmp_path), "--out", str(tmp_path / "c.csv")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "c.csv").exists()
