"""A small version of tools/fault_injection.py: random SIGKILLs lose, repeat and change nothing."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "tools/fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_kills_lose_nothing(tmp_path):
    report = _harness().main(["--runs", "20", "--steps", "300", "--workers", "4", "--kills", "6", "--dir", str(tmp_path)])
    assert report["kills"] == 6
    assert report["runs"] == 20
    assert report["duplicates"] == 0
    assert report["backwards"] == 0
    assert report["mismatches"] == 0
    assert report["temps_left"] == 0
    assert report["checkpoints_left"] == 0
    assert report["attempts"] > report["runs"]  # some kills did land mid-run
