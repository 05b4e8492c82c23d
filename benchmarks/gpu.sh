#!/usr/bin/env bash
# The GPU checks and benchmarks in one run (under 10 minutes on an H100/H200), for a machine with a CUDA
# device and PyTorch but no network: the CUDA tests, the cost model's GPU constants, paper-scale
# groups and the projected time of the default study's stages 1 and 2.
#   bash benchmarks/gpu.sh [OUT_DIR]
# Results go to OUT_DIR (default: benchmarks/gpu-out): the test log, the fitted cost_model.yaml and
# the benchmark tables; copy the cuda block of cost_model.yaml into src/rnnsweep/cost_model.yaml.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/gpu-out}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"
# 1. The CUDA tests: the engine against the reference, both paths; superset groups against the CPU; resume.
timeout 240 python3 -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -x 2>&1 | tail -n 30 | tee "$out/tests.txt"
# 2. The cost model's constants on this GPU, fitted and written into this checkout's copy.
timeout 150 python3 benchmarks/cost_model.py --device cuda --budget-s 0.03 --write 2>&1 | tail -n 3 | tee "$out/cost_model.txt"
cp src/rnnsweep/cost_model.yaml "$out/cost_model.yaml"
# 3. Paper-scale groups (batch 256), superset against one by one, with GPU memory per group.
timeout 150 python3 benchmarks/batched.py groups --device cuda --rounds 3 --steps 5 \
  --shapes 1x32 2x32 3x32 1x256 2x256 3x256 2>&1 | tee "$out/groups.md"
# 4. Stage 1 and 2 of configs/default.yaml on one GPU, from the constants just fitted.
timeout 60 python3 benchmarks/batched.py project --device cuda 2>&1 | tee "$out/project.txt"
# 5. A training step on BPE ids against one on bytes, at paper-scale widths (stage 3's 10 seeds, batch 256).
timeout 90 python3 benchmarks/tokens.py --device cuda --widths 256 512 --batch 256 --vocabs 2048 8192 \
  --rounds 3 --steps 20 2>&1 | tee "$out/tokens.txt"
