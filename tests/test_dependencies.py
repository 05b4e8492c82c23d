"""What a fresh machine installs: the lock, pyproject.toml and the conda env agree, the environment is the
lock, and no code leans on a dependency's private modules (envs/requirements.lock, tools/lock.py)."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "envs" / "requirements.lock"
CONDA_ENV = ROOT / "envs" / "rnnsweep.yaml"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")

#: Private names of dependencies that the code may use: each is named in the README, pinned by a test,
#: and its package is pinned exactly in pyproject.toml. Name -> the test that pins its behaviour.
ALLOWED_PRIVATE = {"torch._fused_adam_": "tests/test_model.py::test_adam_is_torch_adam"}


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if match := PIN.match(line):
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _direct() -> list[Requirement]:
    """The project's own dependencies and its test extra's."""
    project = _pyproject()
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_direct_dependency_is_locked_within_its_range():
    lock = _lock()
    for req in _direct():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is a dependency in pyproject.toml but not in the lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"lock has {name}=={lock[name]}, pyproject {req}"
        for spec in req.specifier:
            if spec.operator == "==":
                assert lock[name] == spec.version, f"pyproject pins {req}, the lock {name}=={lock[name]}"


def test_conda_env_installs_exactly_the_lock():
    env = yaml.safe_load(CONDA_ENV.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for line in pip:
        match = PIN.match(line)
        assert match, f"{CONDA_ENV.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(match[1])] = match[2]
    assert pins == _lock()
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Version(python.removeprefix("python=")) in SpecifierSet(_pyproject()["requires-python"])


def _installed(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is in the lock but not installed: install with `pip install -r {LOCK.relative_to(ROOT)}`")


def test_this_environment_is_the_lock():
    """The tests run on exactly the locked versions (a local build label such as torch's `+cpu` aside)."""
    wrong = {
        name: f"{Version(_installed(name).version)} installed, {version} locked"
        for name, version in _lock().items()
        if Version(_installed(name).version).public != Version(version).public
    }
    assert not wrong


def _requires(name: str, extras: set[str]) -> list[Requirement]:
    """What an installed package requires for the given extras, on this interpreter and platform."""
    found = []
    for text in _installed(name).requires or []:
        req = Requirement(text)
        env_extras = extras or {""}
        if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in env_extras):
            found.append(req)
    return found


def test_lock_is_the_closure_of_the_direct_dependencies():
    """Everything the direct dependencies need, transitively, is locked, and nothing else is (a stale lock)."""
    seen: dict[str, set[str]] = {}
    todo = [(canonicalize_name(r.name), set(r.extras)) for r in _direct() if r.marker is None or r.marker.evaluate()]
    while todo:
        name, extras = todo.pop()
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        todo += [(canonicalize_name(r.name), set(r.extras)) for r in _requires(name, extras)]
    assert set(seen) == set(_lock()), f"missing {set(seen) - set(_lock())}, not needed {set(_lock()) - set(seen)}"


# --------------------------------------------------------------------------- private names


def _dependency_modules() -> set[str]:
    """Top-level import names of the locked distributions (torch, yaml, filelock, ...)."""
    locked = set(_lock())
    return {
        module
        for module, dists in metadata.packages_distributions().items()
        if any(canonicalize_name(d) in locked for d in dists)
    }


def _private_prefix(dotted: str) -> set[str]:
    """`{"torch._dynamo"}` for "torch._dynamo.reset": the name up to its first private part; empty if none is."""
    parts = dotted.split(".")
    for i, part in enumerate(parts[1:], start=2):
        if part.startswith("_") and not part.startswith("__"):
            return {".".join(parts[:i])}
    return set()


def _private_names(tree: ast.AST, deps: set[str]) -> set[str]:
    """The private modules and names (a part starting with one `_`) of dependencies that `tree` reaches."""
    bound: dict[str, str] = {}  # local name -> the dependency module it stands for
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in (a for a in node.names if a.name.split(".")[0] in deps):
                top = alias.name.split(".")[0]
                bound[alias.asname or top] = alias.name if alias.asname else top
                found |= _private_prefix(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in deps:
            found |= set().union(*(_private_prefix(f"{node.module}.{a.name}") for a in node.names))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in bound:
                found |= _private_prefix(".".join([bound[inner.id], *reversed(parts)]))
    return found


def _programs(source: str) -> list[ast.AST]:
    """A module's tree, and the trees of the Python programs in its string constants (run with `-c`)."""
    trees = [ast.parse(source)]
    for node in ast.walk(trees[0]):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import " in node.value:
            try:
                trees.append(ast.parse(node.value))
            except SyntaxError:
                pass
    return trees


def _python_files() -> list[Path]:
    return sorted(p for folder in ("src", "tests", "tools", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def test_no_private_module_or_name_of_a_dependency_is_used():
    deps = _dependency_modules()
    used = {}
    for path in _python_files():
        source = path.read_text()
        # This file's own strings are the scanner's test cases, not programs that run.
        for tree in _programs(source) if path != Path(__file__).resolve() else [ast.parse(source)]:
            for name in _private_names(tree, deps):
                used.setdefault(name, []).append(str(path.relative_to(ROOT)))
    unexpected = {name: files for name, files in used.items() if name not in ALLOWED_PRIVATE}
    assert not unexpected, f"private names of dependencies: {unexpected}"


@pytest.mark.parametrize("name", sorted(ALLOWED_PRIVATE))
def test_an_allowed_private_name_is_documented_pinned_and_tested(name):
    assert f"`{name}`" in (ROOT / "README.md").read_text(), f"the README does not name {name}"
    package = canonicalize_name(name.split(".")[0])
    pins = [s for r in _direct() if canonicalize_name(r.name) == package for s in r.specifier if s.operator == "=="]
    assert pins, f"{package} is not pinned exactly in pyproject.toml"
    test_file, test_name = ALLOWED_PRIVATE[name].split("::")
    assert f"def {test_name}(" in (ROOT / test_file).read_text(), f"no test {ALLOWED_PRIVATE[name]} pins {name}"


def test_the_private_name_scan_finds_what_it_is_for():
    """The scanner itself: each way of reaching a private name is caught, public ones are not."""
    source = (
        "import filelock._marker\nimport numpy as np\nfrom yaml._x import y\nfrom torch import _C\n"
        "np._core.foo()\ntorch = None\nnp.__version__\nnp.linalg.norm\n"
        'PROGRAM = """\nimport torch\ntorch._dynamo.reset()\n"""\n'
    )
    deps = {"filelock", "numpy", "yaml", "torch"}
    found = set().union(*(_private_names(tree, deps) for tree in _programs(source)))
    assert found == {"filelock._marker", "yaml._x", "torch._C", "numpy._core", "torch._dynamo"}
