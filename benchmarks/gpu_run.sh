#!/usr/bin/env bash
# Engine benchmarks on the lent GPU machine, in ONE call of about 8 minutes:
#
#     run(command="bash benchmarks/gpu_run.sh", timeout_s=600)
#
# Engines on CUDA: torch eager, torch.compile, CUDA graphs (eager and compiled, captured by hand),
# AOTInductor; presets mini (B 1, 32, 512), nano and prod (B 1, 32), C=64, plus 1000 candidates of
# one user (one pass vs 16 chunks of 64), bf16 first (the upstream JAX figures are bf16), then fp32.
# Compiled engines are left out where they would cost minutes for little (AOTInductor in fp32 and for
# nano, torch.compile for nano/prod fp32). Hash tables of 16384 rows keep prod's weights + tables under
# 2 GB (AOTInductor packs them); the FLOPs do not depend on it. Writes into $OUT (at most 8 files come back):
# engine.json (partial results are kept if time runs out), report.md, 2 PNGs, log.txt, nvidia-smi.txt, and
# host.json (the gpu-python engine host: host vs device gather, one instance vs two; benchmarks/host.py).
# rich and matplotlib are in that machine's image; were they missing, wheels in a carried .whl/ would be
# installed offline, and without them the run still completes (plain progress lines, a report without
# plots: re-render the plots here with `python -m benchmarks report <folder>`). Nothing else is needed
# there (no tritonclient, no tritonserver: engine mode only).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/phoenix-gpu-bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
START=$(date +%s)

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --find-links .whl rich matplotlib >/dev/null 2>&1 || true
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
export PYTHONUNBUFFERED=1

# The sweep stops starting new points after --deadline seconds; `timeout` is the hard stop (the
# JSON is rewritten after every point, so a kill keeps what was measured).
timeout -k 10 380 "$PY" -m benchmarks engine --device cuda --out "$OUT" \
  --engines torch,torch_compile,aoti,cuda_graph,torch_compile_cuda_graph \
  --presets mini,prod,nano --precisions bf16,fp32 \
  --batch-sizes mini=1,32,512 prod=1,32 nano=1,32 --candidates mini=64,256,1000 prod=64 nano=64 --base-c 64 \
  --big-c-presets mini,prod,nano --dense-engines torch,cuda_graph \
  --exclude 'aoti/*/fp32' 'aoti/nano/*' 'torch_compile*/nano/fp32' 'torch_compile*/prod/fp32' \
  --vocab 16384 --warmup 3 --min-reps 10 --seconds 0.5 --deadline 330 \
  --note "lent GPU machine, one run of benchmarks/gpu_run.sh" > "$OUT/log.txt" 2>&1
echo "benchmark exit status $? after $(( $(date +%s) - START )) s" >> "$OUT/log.txt"

"$PY" -m benchmarks report "$OUT" >> "$OUT/log.txt" 2>&1

# Issue 26: the gpu-python engine host, host gather vs device gather and one instance vs two (in-process hosts
# on cuda:0; no tritonserver needed): a mini gpu-python build with the torch engine, then benchmarks.host.
timeout -k 10 150 "$PY" -m export.build --preset mini --target gpu-python --engines torch --no-towers \
  --vocab 65536 --output /tmp/phoenix-gpu-python >> "$OUT/log.txt" 2>&1 && \
timeout -k 10 60 "$PY" -m benchmarks.host --repository /tmp/phoenix-gpu-python --device cuda:0 --out "$OUT" \
  >> "$OUT/log.txt" 2>&1
echo "host benchmark exit status $? after $(( $(date +%s) - START )) s" >> "$OUT/log.txt"
rm -f "$OUT"/*.tmp
tail -n 40 "$OUT/log.txt"
ls -la "$OUT"
