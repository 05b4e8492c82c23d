"""Stage-1 grid, design ids, seeds and the manifest file (rnnsweep.design, rnnsweep.grid)."""

from __future__ import annotations

import csv
import io
import itertools
import random
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from designs import all_on, design
from rnnsweep import config
from rnnsweep.design import SWITCHES, Design
from rnnsweep.grid import (
    ManifestError,
    make_runs,
    read_manifest,
    run_seed,
    stage1_designs,
    write_manifest,
)

STUDY_SWITCHES = (
    "use_input_gate",
    "use_forget_gate",
    "use_output_gate",
    "use_state_gate",
    "use_new_state",
    "use_old_state",
    "use_residual",
)
SETTINGS_VALUES = dict(steps=20, batch_size=4, history_size=8, log_every=5, lr=1e-3, eval_bytes=16)


@pytest.fixture(scope="module")
def grid() -> list[Design]:
    return stage1_designs([1, 2, 3], [32, 256])


def _expected_grid_keys() -> set[tuple]:
    """The rule of docs/study.md §4, enumerated independently: (switch bits..., n_layers, state_size)."""
    keys = set()
    for bits in itertools.product((False, True), repeat=7):
        sw = dict(zip(STUDY_SWITCHES, bits))
        if not (sw["use_new_state"] or sw["use_old_state"]):
            continue
        for layers in (1, 2, 3):
            for size in (32, 256):
                if size < 256 and not sw["use_residual"]:
                    continue
                keys.add((*bits, layers, size))
    return keys


def _key(d: Design) -> tuple:
    return (*(getattr(d, s) for s in STUDY_SWITCHES), d.n_layers, d.state_size)


# --------------------------------------------------------------------------- the grid


def test_switch_names_are_the_seven_of_the_study():
    assert tuple(SWITCHES) == STUDY_SWITCHES


def test_stage1_grid_has_432_designs_following_the_rule(grid):
    assert len(grid) == 432
    expected = _expected_grid_keys()
    assert len(expected) == 432  # 96 switch combos x 3 depths x 1 + 48 x 3 narrow residual ones
    assert {_key(d) for d in grid} == expected
    assert len({_key(d) for d in grid}) == len(grid)  # no design twice


def test_grid_counts_by_width(grid):
    wide = [d for d in grid if d.state_size == 256]
    narrow = [d for d in grid if d.state_size == 32]
    assert len(wide) == 3 * 96
    assert len(narrow) == 3 * 48
    assert all(d.use_residual for d in narrow)
    assert all(d.use_new_state or d.use_old_state for d in grid)


def test_ids_are_unique(grid):
    ids = [d.id for d in grid]
    assert len(set(ids)) == 432
    assert all(isinstance(i, str) and i for i in ids)


def test_ids_do_not_depend_on_generation_order(grid):
    shuffled = stage1_designs([3, 1, 2], [256, 32, 256])
    assert {d.id for d in shuffled} == {d.id for d in grid}
    by_key = {_key(d): d.id for d in grid}
    for d in shuffled:
        assert by_key[_key(d)] == d.id


def test_same_design_built_again_has_same_id(grid):
    rng = random.Random(1)
    for d in rng.sample(grid, 20):
        fields = asdict(d)
        items = list(fields.items())
        rng.shuffle(items)
        again = Design(**dict(items))
        assert again.id == d.id
        assert again == d


def test_id_changes_with_every_field():
    base = all_on(n_layers=2, state_size=32)
    ids = {base.id}
    for name in STUDY_SWITCHES:
        ids.add(base.replace(**{name: False}).id)
    ids.add(base.replace(n_layers=3).id)
    ids.add(base.replace(state_size=256).id)
    assert len(ids) == 1 + 7 + 2


def test_from_mapping_pandas_rows_give_same_ids(grid, tmp_path):
    frame = pd.DataFrame([asdict(d) for d in grid])
    frame["noise"] = np.arange(len(frame))  # extra columns must not matter
    for (_, row), d in zip(frame.iterrows(), grid):
        assert Design.from_mapping(row).id == d.id
    # the same through a CSV file read back by pandas (numpy bools and int64)
    frame.to_csv(tmp_path / "designs.csv", index=False)
    back = pd.read_csv(tmp_path / "designs.csv")
    for (_, row), d in zip(back.iterrows(), grid):
        assert Design.from_mapping(row).id == d.id


def test_from_mapping_plain_csv_rows_give_same_ids(grid):
    """A row from the csv module holds strings: 'False' must not become True."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(grid[0])))
    writer.writeheader()
    writer.writerows(asdict(d) for d in grid)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    for row, d in zip(rows, grid):
        assert Design.from_mapping(row) == d
        assert Design.from_mapping(row).id == d.id


def test_design_needs_new_or_old_state():
    with pytest.raises(ValueError):
        design("input_gate", "forget_gate", "output_gate", "state_gate", "residual", n_layers=1, state_size=8)


# --------------------------------------------------------------------------- runs and seeds


def test_make_runs_ids_and_seeds(grid):
    designs = grid[:5]
    runs = make_runs(designs, SETTINGS_VALUES, replicates=3, base_seed=7)
    assert len(runs) == 15
    for d in designs:
        mine = [r for r in runs if r.config_id == d.id]
        assert [r.replicate for r in mine] == [0, 1, 2]
        assert [r.id for r in mine] == [d.id, f"{d.id}-r1", f"{d.id}-r2"]
        assert len({r.seed for r in mine}) == 3  # differ across replicates
        assert all(r.design == d for r in mine)
    assert len({r.id for r in runs}) == 15
    # deterministic: built again gives the same seeds; the settings are copied in
    again = make_runs(designs, SETTINGS_VALUES, replicates=3, base_seed=7)
    assert [r.seed for r in again] == [r.seed for r in runs]
    for r in runs:
        assert dict(r.settings) == config.training_defaults() | SETTINGS_VALUES  # a setting with a default may be left out
        assert r.seed == run_seed(r.config_id, r.replicate, 7)
        assert 0 <= r.seed < 2**31


def test_seed_depends_on_design_replicate_and_base(grid):
    a, b = grid[0].id, grid[1].id
    assert run_seed(a, 0, 0) == run_seed(a, 0, 0)
    assert run_seed(a, 0, 0) != run_seed(a, 1, 0)
    assert run_seed(a, 0, 0) != run_seed(a, 0, 1)
    assert run_seed(a, 0, 0) != run_seed(b, 0, 0)
    # a design's seed does not depend on what else is in the grid or its position
    alone = make_runs([grid[10]], SETTINGS_VALUES)[0]
    among = [r for r in make_runs(grid, SETTINGS_VALUES) if r.config_id == grid[10].id][0]
    assert alone == among


# --------------------------------------------------------------------------- manifest


@pytest.fixture
def runs(grid):
    return make_runs(grid[::20], SETTINGS_VALUES)  # 22 runs


def test_manifest_columns(tmp_path, runs):
    path = tmp_path / "manifest.csv"
    write_manifest(path, runs)
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    study_settings = ("steps", "batch_size", "history_size", "log_every", "lr", "eval_bytes")
    for col in ("id", *STUDY_SWITCHES, "n_layers", "state_size", "replicate", "seed", *study_settings):
        assert col in header
    assert len(header) == len(set(header))
    frame = pd.read_csv(path)
    assert list(frame["id"]) == [r.id for r in runs]
    for name in STUDY_SWITCHES:
        assert list(frame[name]) == [getattr(r.design, name) for r in runs]
    assert list(frame["seed"]) == [r.seed for r in runs]


def test_manifest_round_trip(tmp_path, runs):
    path = tmp_path / "stage1" / "manifest.csv"
    written = write_manifest(path, runs)
    assert written == runs
    assert read_manifest(path) == runs


def test_full_grid_manifest_round_trip(tmp_path, grid):
    runs = make_runs(grid, SETTINGS_VALUES, base_seed=5)
    path = tmp_path / "manifest.csv"
    write_manifest(path, runs)
    assert read_manifest(path) == runs
    assert len(path.read_text().splitlines()) == 1 + 432
    assert len({r.id for r in runs}) == 432


def test_rewriting_same_runs_is_byte_identical(tmp_path, runs):
    path = tmp_path / "manifest.csv"
    write_manifest(path, runs)
    before = path.read_bytes()
    write_manifest(path, runs)
    assert path.read_bytes() == before
    write_manifest(path, list(reversed(runs)))  # same runs, other order: existing order wins
    assert path.read_bytes() == before



def test_a_subset_is_written_as_asked_in_the_old_order(tmp_path, runs):
    """Runs no longer asked for leave the manifest, so no stage mixes runs of two configurations."""
    path = tmp_path / "manifest.csv"
    write_manifest(path, runs)
    subset = [runs[5], runs[1], runs[3]]
    assert write_manifest(path, subset) == [runs[1], runs[3], runs[5]]
    assert read_manifest(path) == [runs[1], runs[3], runs[5]]


def test_superset_appends_new_rows_at_end(tmp_path, runs):
    path = tmp_path / "manifest.csv"
    first = runs[:10]
    write_manifest(path, first)
    before = path.read_bytes()
    bigger = list(runs)
    random.Random(3).shuffle(bigger)
    write_manifest(path, bigger)
    after = path.read_bytes()
    assert after.startswith(before)
    new = [r for r in bigger if r not in first]
    assert read_manifest(path) == first + new
    assert len(after.decode().splitlines()) == 1 + len(runs)


def test_same_id_other_settings_takes_the_new_row_in_place(tmp_path, runs):
    """Changed settings rewrite the run's row (its old result then no longer fits its fingerprint)."""
    path = tmp_path / "manifest.csv"
    write_manifest(path, runs)
    changed = list(runs)
    changed[4] = make_runs([runs[4].design], {**SETTINGS_VALUES, "steps": 21})[0]
    written = write_manifest(path, changed)
    assert [r.id for r in written] == [r.id for r in runs]  # same order
    assert read_manifest(path)[4].settings.steps == 21
    assert [r for i, r in enumerate(read_manifest(path)) if i != 4] == [r for i, r in enumerate(runs) if i != 4]


def _set_field(lines: list[str], index: int, column: str, value: str) -> None:
    """Replace one column's value in lines[index] of a manifest read as lines."""
    fields = lines[index].split(",")
    fields[lines[0].split(",").index(column)] = value
    lines[index] = ",".join(fields)


def _assert_names(err: pytest.ExceptionInfo, path: Path, line: int | None = None) -> None:
    message = str(err.value)
    assert str(path) in message
    if line is not None:
        assert re.search(rf"\bline {line}\b", message), message


def test_missing_manifest(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    _assert_names(err, path)


# Hand-edits of a five-run manifest, made on its lines (lines[0] is the header, lines[i] run i-1). Each
# edit returns what the message must name besides the file and the line, or None. tests/test_bad_input.py's
# BROKEN table refuses damage of these kinds through the CLI but checks no line numbers: these do. Damage
# with no line to name (a missing column, a file that is no manifest at all) is BROKEN's alone.


def _bad_boolean(lines: list[str]) -> str:
    _set_field(lines, 3, "use_residual", "maybe")  # line 4 of the file
    return "use_residual"


def _bad_integer(lines: list[str]) -> None:
    _set_field(lines, 5, "steps", "ten")  # line 6


def _duplicate_id(lines: list[str]) -> str:
    lines.append(lines[2])  # becomes line 7
    return lines[2].split(",")[0]  # the id of the second run


def _truncated_row(lines: list[str]) -> None:
    lines[2] = lines[2][: len(lines[2]) // 2]  # line 3 cut short


def _extra_field(lines: list[str]) -> None:
    lines[4] += ",oops"  # line 5 has one field more than the header


def _bad_row_after_a_blank_line(lines: list[str]) -> None:
    _set_field(lines, 3, "use_input_gate", "yes")
    lines.insert(2, "")  # a blank line 3; the bad row is now on line 5 of the file


def _design_changed(lines: list[str]) -> None:
    n_layers = int(lines[1].split(",")[lines[0].split(",").index("n_layers")])
    _set_field(lines, 1, "n_layers", str(n_layers % 3 + 1))  # line 2's config_id no longer fits its design


DAMAGE = {  # name: (edit, the line the message must name)
    "bad-boolean": (_bad_boolean, 4),
    "bad-integer": (_bad_integer, 6),
    "duplicate-id": (_duplicate_id, 7),
    "truncated-row": (_truncated_row, 3),
    "extra-field": (_extra_field, 5),
    "blank-lines-counted": (_bad_row_after_a_blank_line, 5),
    "config-id-mismatch": (_design_changed, 2),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_row_names_file_and_line(tmp_path, runs, damage):
    edit, line = DAMAGE[damage]
    path = tmp_path / "manifest.csv"
    write_manifest(path, runs[:5])
    lines = path.read_text().splitlines()
    named = edit(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    _assert_names(err, path, line)
    if named is not None:
        assert named in str(err.value)
