"""Stage-2 and stage-3 selection from a previous stage's summary (rnnsweep.select).

Expected designs are recomputed here from the rule of docs/study.md §5–6, with plain sorting
and set arithmetic, and compared with what the module builds.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from designs import design
from rnnsweep.design import SWITCHES, Design
from rnnsweep.grid import make_runs, stage1_designs
from rnnsweep.select import stage2_runs, stage2_units, stage3_runs, stage3_units

SETTINGS = dict(steps=50, batch_size=8, history_size=16, log_every=5, lr=1e-3, eval_bytes=32)
STAGE2 = dict(keep_fraction=0.1, wide_state_size=512, deep_layers=3, deep_state_sizes=[256, 512], **SETTINGS)


def stage2_designs(*args, **kwargs) -> list:
    """The designs stage 2 trains (a stage 1 without axes carries no settings)."""
    return [design for design, _ in stage2_units(*args, **kwargs)]


def stage3_designs(*args, **kwargs) -> list:
    return [design for design, _ in stage3_units(*args, **kwargs)]


def _summary(designs: list[Design], seed: int, n_diverged: int = 30) -> pd.DataFrame:
    """A synthetic summary: one row per design, coarse losses (so ties happen), some diverged.

    Half of the diverged rows carry a tempting low min_loss (reached before diverging).
    """
    rng = np.random.default_rng(seed)
    rows = [run.row() for run in make_runs(designs, SETTINGS)]
    losses = rng.integers(150, 300, len(rows)) / 100.0
    status = np.array(["ok"] * len(rows), dtype=object)
    bad = rng.choice(len(rows), n_diverged, replace=False)
    status[bad] = "diverged"
    losses[bad[: n_diverged // 2]] = np.nan
    losses[bad[n_diverged // 2 :]] = 0.5
    frame = pd.DataFrame(rows)
    frame["status"] = status
    frame["min_loss"] = losses
    return frame


def _design_of(row) -> Design:
    """The design of a summary row, read with plain bool() and int()."""
    switches = {k: bool(row[k]) for k in SWITCHES}
    return Design(**switches, n_layers=int(row["n_layers"]), state_size=int(row["state_size"]))


def _ranked_ok(frame: pd.DataFrame) -> list[tuple[float, str, Design]]:
    """(min_loss, id, design) of finished rows, best first, ties by id: plain Python sort."""
    out = []
    for record in frame.to_dict("records"):
        if record["status"] != "ok":
            continue
        out.append((float(record["min_loss"]), str(record["id"]), _design_of(record)))
    return sorted(out, key=lambda t: (t[0], t[1]))


def _expected_stage2(frame: pd.DataFrame, fraction, wide: int, deep: int, deep_sizes: list[int]) -> set[Design]:
    keep = math.floor(Fraction(str(fraction)) * len(frame))
    expected = set()
    for _, _, d in _ranked_ok(frame)[:keep]:
        expected.add(d)
        expected.add(dataclasses.replace(d, state_size=wide))
        if d.n_layers < deep:
            for size in deep_sizes:
                expected.add(dataclasses.replace(d, n_layers=deep, state_size=size))
    return expected


@pytest.fixture(scope="module")
def grid() -> list[Design]:
    return stage1_designs([1, 2, 3], [32, 256])


@pytest.fixture(scope="module")
def stage1(grid) -> pd.DataFrame:
    return _summary(grid, seed=2024)


def test_stage2_exact_designs(stage1):
    got = stage2_designs(stage1, 0.1, 512, 3, [256, 512])
    assert len(got) == len(set(got)), "a design appears twice"
    assert set(got) == _expected_stage2(stage1, 0.1, 512, 3, [256, 512])


def test_stage2_keeps_43_of_432_and_counts_diverged_in_n(stage1):
    assert len(stage1) == 432
    assert (stage1["status"] == "diverged").sum() == 30
    got = set(stage2_designs(stage1, 0.1, 512, 3, [256, 512]))
    ranked = [d for _, _, d in _ranked_ok(stage1)]
    assert set(ranked[:43]) <= got  # floor(0.1 * 432) with diverged rows counted in N
    # designs ranked 44th and below appear only as variants of a kept design
    variants = set()
    for d in ranked[:43]:
        variants |= {d.replace(state_size=512)}
        if d.n_layers < 3:
            variants |= {d.replace(n_layers=3, state_size=s) for s in (256, 512)}
    for d in ranked[43:]:
        assert (d in got) == (d in variants)


def test_stage2_never_selects_diverged(stage1):
    got = set(stage2_designs(stage1, 0.1, 512, 3, [256, 512]))
    diverged = stage1[stage1["status"] == "diverged"]
    ok_keys = {d for _, _, d in _ranked_ok(stage1)}
    for _, row in diverged.iterrows():
        d = _design_of(row)
        if d in got:  # only allowed as a variant of a kept finished design
            assert d in _expected_stage2(stage1, 0.1, 512, 3, [256, 512])
            assert d not in {x for _, _, x in _ranked_ok(stage1)[:43]}
        assert d not in ok_keys


def test_stage2_does_not_depend_on_row_order_or_csv_round_trip(stage1, tmp_path):
    expected = stage2_designs(stage1, 0.1, 512, 3, [256, 512])
    shuffled = stage1.sample(frac=1.0, random_state=5).reset_index(drop=True)
    assert set(stage2_designs(shuffled, 0.1, 512, 3, [256, 512])) == set(expected)
    stage1.to_csv(tmp_path / "summary.csv", index=False)
    back = pd.read_csv(tmp_path / "summary.csv")
    assert set(stage2_designs(back, 0.1, 512, 3, [256, 512])) == set(expected)


def test_stage2_variants_and_duplicates_kept_once():
    a = design("input_gate", "output_gate", "new_state", "old_state", "residual", n_layers=1, state_size=256)
    b, c = a.replace(n_layers=2), a.replace(n_layers=3)
    filler = [d for d in stage1_designs([1], [64]) if d.use_input_gate != a.use_input_gate][:7]
    designs = [a, b, c, *filler]
    frame = pd.DataFrame([r.row() for r in make_runs(designs, SETTINGS)])
    frame["status"] = "ok"
    frame["min_loss"] = [1.0, 1.1, 1.2] + [2.0] * 7
    got = stage2_designs(frame, 0.3, 512, 3, [256, 512])  # keeps a, b, c
    expected = [
        a, a.replace(state_size=512), c, c.replace(state_size=512),
        b, b.replace(state_size=512),
    ]
    assert len(got) == len(set(got))
    assert set(got) == set(expected)
    assert len(got) == 6


def test_stage2_ties_broken_by_id():
    designs = stage1_designs([1], [64])[:20]
    frame = pd.DataFrame([r.row() for r in make_runs(designs, SETTINGS)])
    frame["status"] = "ok"
    frame["min_loss"] = 2.0
    frame.loc[[3, 7, 11, 15], "min_loss"] = 1.0  # four tie for best; 0.1 * 20 keeps two
    winners = sorted(frame.loc[[3, 7, 11, 15], "id"])[:2]
    want = {d for d in designs if d.id in winners}
    for seed in range(4):
        shuffled = frame.sample(frac=1.0, random_state=seed)
        got = stage2_designs(shuffled, 0.1, 64, 1, [64])  # no wider, no deeper variants
        assert set(got) == want


@pytest.mark.parametrize("fraction, kept", [(0.1, 10), (0.29, 29), (0.57, 57), (0.5, 50)])
def test_stage2_keeps_floor_of_fraction_times_n(fraction, kept):
    designs = stage1_designs([1, 2], [256])[:100]  # widths/depths of variants never occur here
    frame = _summary(designs, seed=11, n_diverged=0)
    got = set(stage2_designs(frame, fraction, 512, 3, [512]))
    originals = got & set(designs)
    assert len(originals) == kept
    assert originals == {d for _, _, d in _ranked_ok(frame)[:kept]}


def test_stage2_runs(stage1):
    runs = stage2_runs(stage1, {**STAGE2, "seed": 3})
    designs = stage2_designs(stage1, 0.1, 512, 3, [256, 512])
    assert [r.design for r in runs] == designs
    assert [r.id for r in runs] == [d.id for d in designs]
    assert all(r.replicate == 0 and r.config_id == r.id for r in runs)
    assert all(r.settings[k] == v for r in runs for k, v in SETTINGS.items())
    assert len({r.seed for r in runs}) == len(runs)


# --------------------------------------------------------------------------- stage 3


@pytest.fixture(scope="module")
def stage2(stage1) -> pd.DataFrame:
    designs = stage2_designs(stage1, 0.1, 512, 3, [256, 512])
    return _summary(designs, seed=99, n_diverged=12)


def test_stage3_best_top_k(stage2):
    got = stage3_designs(stage2, 10)
    best = [d for _, _, d in _ranked_ok(stage2)][:10]
    assert got == best


def test_stage3_runs_replicates_ids_and_seeds(stage2, tmp_path):
    cfg = dict(top_k=10, replicates=10, **SETTINGS)
    runs = stage3_runs(stage2, {**cfg, "seed": 0})
    best = [d for _, _, d in _ranked_ok(stage2)][:10]
    assert len(runs) == 100
    for d in best:
        mine = [r for r in runs if r.config_id == d.id]
        assert sorted(r.replicate for r in mine) == list(range(10))
        assert {r.id for r in mine} == {d.id} | {f"{d.id}-r{k}" for k in range(1, 10)}
        for r in mine:
            assert r.id == (d.id if r.replicate == 0 else f"{d.id}-r{r.replicate}")
            assert r.design == d
    assert len({r.id for r in runs}) == 100
    assert len({r.seed for r in runs}) == 100
    # the same from the summary as written to disk and read back
    stage2.to_csv(tmp_path / "summary.csv", index=False)
    again = stage3_runs(pd.read_csv(tmp_path / "summary.csv"), {**cfg, "seed": 0})
    assert again == runs


def test_stage3_ties_broken_by_id_and_diverged_skipped():
    designs = stage1_designs([2], [16])[:12]
    frame = pd.DataFrame([r.row() for r in make_runs(designs, SETTINGS)])
    frame["status"] = "ok"
    frame["min_loss"] = 1.5
    frame.loc[0, ["status", "min_loss"]] = ["diverged", 0.1]
    frame.loc[1, "min_loss"] = 1.0
    ids = sorted(frame.loc[2:, "id"])
    expected_ids = [frame.loc[1, "id"], *ids[:2]]
    for seed in range(3):
        got = stage3_designs(frame.sample(frac=1.0, random_state=seed), 3)
        assert [d.id for d in got] == expected_ids
