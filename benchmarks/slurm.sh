#!/usr/bin/env bash
# The smoke study locally and through profiles/slurm on a running cluster, back to back, ROUNDS times:
#   bash tools/slurm_cluster.sh start && bash benchmarks/slurm.sh [ROUNDS]
# Each run starts from an empty copy of the checkout; prints one line per run with its wall time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
ROUNDS=${1:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

fresh_copy() {
  rm -rf "$WORK/checkout" && mkdir "$WORK/checkout"
  cp -r "$ROOT"/{Snakefile,workflow,configs,profiles,envs,src} "$WORK/checkout/"
  # profiles/slurm with training on the local partition without GPUs, as tests/test_slurm.py does.
  "$PYTHON" - "$WORK/checkout/profiles" <<'PY'
import sys, pathlib, yaml
profiles = pathlib.Path(sys.argv[1])
shipped = yaml.safe_load((profiles / "slurm/config.yaml").read_text())
shipped["set-resources"]["train"].update(slurm_partition="cpu", gpu=0)
(profiles / "slurm-local").mkdir()
(profiles / "slurm-local/config.yaml").write_text(yaml.safe_dump(shipped))
PY
}

timed() {  # label, snakemake options...
  local label=$1; shift
  fresh_copy
  local start=$SECONDS
  (cd "$WORK/checkout" && "$PYTHON" -m snakemake --configfile configs/smoke.yaml "$@" >"$WORK/$label.log" 2>&1) \
    || { tail -20 "$WORK/$label.log"; exit 1; }
  echo "$label $((SECONDS - start)) s"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  timed local --cores 2
  timed slurm --profile profiles/slurm-local
done
