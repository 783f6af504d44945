#!/usr/bin/env bash
# The GPU check of issue 17, as one prepared command (about 8 minutes on one GPU): the `gpu` tests, the
# paper-scale epoch timings, the vmap and teleport benchmarks on CUDA, and the dry-run estimate of the paper's
# full study on that GPU. Run it from the repository root on a machine with CUDA and PyTorch:
#
#   scripts/gpu_check.sh [OUT_DIR]          # default: $OUT if set, else gpu_check_out
#
# The tests are every test marked gpu (all of tests/). Writes into OUT_DIR (at most 7 files): gpu.txt
# (nvidia-smi -L and torch's view), gpu-tests.txt, and the results files bench-epoch-cuda.json,
# bench-vmap-cuda.json, bench-teleport-cuda.json and paper-estimate-cuda.json, which go to docs/data/ and feed
# the docs tables (scripts/make_doc_tables.py). No install: nnteleport is imported from src/ (PYTHONPATH);
# PYTHON picks the interpreter (default python3). Every step has its own time limit, so one that hangs cannot
# take the others with it; the exit status is the tests' (2 without CUDA).
set -uo pipefail

out="${1:-${OUT:-gpu_check_out}}"
py="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device here; nothing to check" >&2
  exit 2
fi
{
  nvidia-smi -L 2>&1 || true
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} >"$out/gpu.txt"
cat "$out/gpu.txt"

step() { # step SECONDS NAME COMMAND...: run COMMAND with a time limit, say how it ended
  local limit=$1 name=$2
  shift 2
  echo "=== $name (limit ${limit} s)"
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc"
  return $rc
}

step 240 "gpu tests" "$py" -m pytest -q -p no:cacheprovider -m gpu tests \
  2>&1 | tee "$out/gpu-tests.txt"
tests=${PIPESTATUS[0]}
step 90 "bench_epoch" "$py" -m benchmarks.bench_epoch --device cuda --json "$out/bench-epoch-cuda.json"
step 60 "bench_vmap" "$py" -m benchmarks.bench_vmap --device cuda --ks 4 16 --reps 2 --json "$out/bench-vmap-cuda.json"
step 40 "bench_teleport" "$py" -m benchmarks.bench_teleport --device cuda --json "$out/bench-teleport-cuda.json"
step 120 "paper estimate" "$py" scripts/paper_estimate.py --device cuda --iters 2 --json "$out/paper-estimate-cuda.json"
exit "$tests"
