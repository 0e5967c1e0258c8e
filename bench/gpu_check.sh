#!/usr/bin/env bash
# One command for a lent GPU (H100/H200, torch + triton + cmake + pybind11 preinstalled, no
# network):   bash bench/gpu_check.sh OUTDIR            (about 8 minutes)
#             bash bench/gpu_check.sh --dry-run OUTDIR  (prints what it would run, runs nothing)
# From a fresh clone: builds the extension for the GPU it finds, runs the GPU cases of the
# tests, checks that a training step never waits for the GPU, runs the benchmarks at the
# GPU sizes, and writes the report and the measured auto table. Everything goes to OUTDIR;
# each stage prints a line when it starts and ends, so a cut-off run says how far it got.
set -uo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out="${1:?usage: bash bench/gpu_check.sh [--dry-run] OUTDIR}"
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
status=0

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to OUTDIR/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== [$(( $(date +%s) - start )) s] $name (limit ${limit} s): $*"
  if [ $dry = 1 ]; then return 0; fi
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$out/$name.log"
  echo "== [$(( $(date +%s) - start )) s] $name: exit $rc"
  [ $rc = 0 ] || status=1
  return $rc
}

arch=$(python3 -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')" 2>/dev/null || echo 90)
stage env 60 bash -c "nvidia-smi; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())'"
stage build 240 env LLP_CUDA=1 LLP_WERROR=1 LLP_CUDA_ARCHS="$arch" \
  python3 -m pip install -e . --no-build-isolation --no-deps || { echo "== build failed: stopping"; exit 1; }
stage backends 60 python3 -c "import llp_kernels as lk; [print(f'{n:9s} {s}') for n, s in lk.available_backends().items()]"
select="B256-N1.28M or M128k-U1.15M-t25-float32 or Q128-M128k or N1.28M-B128 or train_step"
if [ $dry = 1 ]; then  # what the test and benchmark stages would run, with their sizes
  python3 -m pytest tests/ --collect-only -q -m gpu 2>/dev/null | grep "::" | sed 's/^/   test  /'
  python3 -m pytest bench/ --collect-only -q --llp-size gpu -k "$select" 2>/dev/null | grep "::" | sed 's/^/   bench /'
fi
stage tests 240 python3 -m pytest -q -rs --maxfail=20 -m gpu -p no:cacheprovider tests/
stage no_sync 120 python3 -m bench.gpu_sync_check
stage bench 300 python3 -m pytest bench/ --benchmark-only -q -rs --llp-size gpu -k "$select" \
  --benchmark-json="$out/bench.json"
stage report 60 python3 -m bench.report "$out/bench.json" --out "$out/report.md"
stage auto_table 60 python3 -m bench.auto_table "$out/bench.json" --table "$out/auto_table.json"
echo "== [$(( $(date +%s) - start )) s] done; status $status; results in $out"
exit $status
