"""Re-resolve the lock from pyproject.toml's ranges: `python3 tools/lock.py`.

Writes `envs/requirements.lock`, every package the project and its tests
install, each at one exact version, as pip's resolver (through pip-tools'
`pip-compile`, in a throw-away virtual environment) chooses them today for
this Python on this platform; and writes the same list into the pip section
of `envs/rnnsweep.yaml`, so a conda deployment installs exactly what the
README's commands and CI install.

torch is written without its local build label (`2.13.0`, not `2.13.0+cpu`):
which build of one release a machine gets is the index's choice (the CPU
wheel here, a CUDA one on a GPU node, whose own CUDA libraries torch pins
exactly), while the release is what the tests pass with.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "envs" / "requirements.lock"
CONDA_ENV = ROOT / "envs" / "rnnsweep.yaml"
PIP_TOOLS = "pip-tools==7.6.2"
LOCK_HEADER = """\
# Every package rnnsweep and its tests install, at the versions the tests pass
# with. Written by `python3 tools/lock.py` (pip-compile over pyproject.toml and
# its `test` extra, Python {python}, Linux x86-64); do not edit by hand.
# torch carries no local build label: the index picks the build (CPU or CUDA).
"""
CONDA_HEADER = """\
# Software of every rule, for `snakemake --sw-deployment-method conda` (or
# `conda env create -f envs/rnnsweep.yaml` by hand). The pip list is
# envs/requirements.lock verbatim, written by tools/lock.py: edit neither by
# hand. The rnnsweep package itself comes from this checkout's src/ (the
# workflow puts it on PYTHONPATH), so the environment holds only third-party
# packages.
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python={python}
  - pip
  - pip:
"""


def compile_lock(out: Path) -> None:
    """Resolve pyproject.toml with its test extra into `out`, with pip-compile from a throw-away venv."""
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        pip = [f"{tmp}/bin/python", "-m"]
        subprocess.run([*pip, "pip", "install", "-q", PIP_TOOLS], check=True)
        subprocess.run(
            [
                *pip, "piptools", "compile", "--quiet", "--extra", "test", "--strip-extras", "--allow-unsafe",
                "--no-emit-index-url", "--no-emit-find-links", "--no-header", "--newline", "LF",
                "--output-file", str(out.relative_to(ROOT)), "pyproject.toml",
            ],
            check=True,
            cwd=ROOT,
        )


def pins(lock_text: str) -> list[str]:
    """The lock's `name==version` lines, in order."""
    return [line for line in lock_text.splitlines() if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==", line)]


def main() -> None:
    compile_lock(LOCK)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    text = LOCK_HEADER.format(python=python) + re.sub(r"^(torch==[^+\s]+)\+\S+", r"\1", LOCK.read_text(), flags=re.M)
    LOCK.write_text(text)
    lines = [CONDA_HEADER.format(python=python)] + [f"      - {pin}\n" for pin in pins(text)]
    CONDA_ENV.write_text("".join(lines))
    print(f"{LOCK.relative_to(ROOT)}: {len(pins(text))} packages; {CONDA_ENV.relative_to(ROOT)} updated")


if __name__ == "__main__":
    main()
