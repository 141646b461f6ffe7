#!/usr/bin/env bash
# One device call for the GPU work: GPU-marked tests, kernel micro-benchmarks, end-to-end bench.
# Usage (on the GPU machine, repo root): STAGES=tests,kernels,variants,bench OUT=out bash benchmarks/device_suite.sh
set -uo pipefail
export PYTHONPATH=src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
OUT=${OUT:-out}
STAGES=${STAGES:-tests,kernels,bench}
SHAPES=${SHAPES:-mamba-2.8b,mamba2-2.7b}
mkdir -p "$OUT"
has() { [[ ",$STAGES," == *",$1,"* ]]; }

if has tests; then
  echo "== GPU tests"
  timeout "${TEST_TIMEOUT:-400}" python3 -m pytest -q -m gpu -p no:cacheprovider ${TEST_FILES:-tests} \
    >"$OUT/gpu_tests.log" 2>&1
  echo "rc=$?"; grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
  grep -E "^(FAILED|ERROR)" "$OUT/gpu_tests.log" | head -40
fi

if has kernels; then
  for f in ${KERNEL_FILES:-benchmarks/kernels_*.py}; do
    name=$(basename "$f" .py)
    echo "== $name"
    timeout "${KERNEL_TIMEOUT:-150}" python3 "$f" >"$OUT/$name.log" 2>&1
    echo "rc=$?"; tail -n 25 "$OUT/$name.log"
  done
fi

if has variants; then
  for s in ${SHAPES//,/ }; do
    echo "== decode variants $s"
    timeout "${VARIANT_TIMEOUT:-300}" python3 benchmarks/decode_variants.py --shape "$s" \
      --precision "${PRECISIONS:-fp16,w8a8}" --variants "${VARIANTS:-plain,pdl}" --json \
      >"$OUT/decode_variants_$s.json" 2>"$OUT/decode_variants_$s.err"
    echo "rc=$?"; grep "^==" "$OUT/decode_variants_$s.json"; tail -n 3 "$OUT/decode_variants_$s.err"
  done
fi

if has bench; then
  for s in ${SHAPES//,/ }; do
    echo "== bench $s"
    timeout "${BENCH_TIMEOUT:-300}" python3 -m quamba.cli.main bench --shape "$s" --precision "${PRECISIONS:-fp16,w8a8}" \
      --prompt-len 1024 --gen-len 128 --batch 1 ${BENCH_ARGS:-} --json >"$OUT/bench_$s.json" 2>"$OUT/bench_$s.err"
    echo "rc=$?"; tail -n 5 "$OUT/bench_$s.err"
    python3 - "$OUT/bench_$s.json" <<'PY'
import json, sys
from quamba.bench import BenchResult, format_table
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("no json:", e); sys.exit(0)
print(d["device"], f'{d["copy_bandwidth_GBps"]:.0f} GB/s', d["model"])
print(format_table([BenchResult(**r) for r in d["results"]]))
PY
  done
fi
