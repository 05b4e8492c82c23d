#!/usr/bin/env bash
# Early warning: run the test suite against the newest versions pyproject.toml allows.
#
#   bash tools/check_latest.sh [pytest arguments]
#
# Installs this checkout with its test extra into a throw-away venv without the
# lock, so pip takes the newest release in every range; prints each package
# whose version differs from envs/requirements.lock, then runs the tests
# (all but the check that the environment is the lock).
# Exit status: pytest's. A failure here, with the locked suite green, names a
# release that will break the project when the lock is next refreshed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade --upgrade-strategy eager -e '.[test]' 2>&1 | grep -v 'is ignored' || true
"$venv/bin/python" - <<'PY'
import importlib.metadata as md, sys
from packaging.utils import canonicalize_name
from packaging.version import Version
sys.path.insert(0, "tools")
from lock import LOCK, pins
lock = dict(pin.split("==") for pin in pins(LOCK.read_text()))
lock = {canonicalize_name(k): v for k, v in lock.items()}
newest = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()}
diff = [(n, lock.get(n, "-"), newest.get(n, "-")) for n in sorted((set(lock) | set(newest)) - {"pip", "rnnsweep"})
        if Version(lock.get(n, "0")).public != Version(newest.get(n, "0")).public]
print(f"newest allowed vs lock: {len(diff)} of {len(lock)} locked packages differ")
for name, locked, latest in diff:
    print(f"  {name:40s} lock {locked:>14s}  newest {latest}")
PY
# Every test but the one that checks the environment *is* the lock, which this one is not by design.
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
  --deselect tests/test_dependencies.py::test_this_environment_is_the_lock "$@"
