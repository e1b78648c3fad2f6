#!/usr/bin/env bash
# One command for a GPU machine without package registries (such as the lent H200):
#   scripts/device_check.sh [OUT_DIR] [STAGE ...]      stages: tests bench proxy (default: tests bench)
# - installs segexp's missing dependencies from the wheels in .whl/ (made by scripts/device_prepare.sh on a
#   machine with PyPI) into a private folder, keeping the machine's own CUDA torch, Lightning and torchmetrics;
# - tests: the CUDA-only tests (pytest -m gpu);
# - bench: python -m segexp.cli.bench (training MFU, inference and loader rates; bench.json);
# - proxy: DeepLabv3 Table 5 on CamVid at full resolution from scratch (profile gpu_proxy), from .camvid/
#   (scripts/device_prepare.sh) or $SEGEXP_DATA_DIR/camvid; SEEDS (default 1) seeds per row, ROWS to restrict.
# Summary, environment, logs, JSON and the proxy report are written to OUT_DIR (default: $OUT, else
# outputs/device); run folders go to $SEGEXP_OUTPUT_DIR (default /tmp/segexp-runs), and their small files
# (metrics.json, table_row.json, logs, CSV metrics; no checkpoints) to OUT_DIR/runs.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT_DIR=${1:-${OUT:-outputs/device}}
shift || true
STAGES=${*:-tests bench}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
SITE=${SEGEXP_SITE:-/tmp/segexp-site}
export PYTHONUNBUFFERED=1

log() { echo "[device_check $(date +%H:%M:%S)] $*" | tee -a "$OUT_DIR/summary.txt"; }

if ! "$PY" -c "import hydra, omegaconf, albumentations" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { log "missing dependencies and no .whl/ folder: run scripts/device_prepare.sh first"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { log "wheel install failed"; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# segexp runs from this checkout (conf/ and experiments/ are found beside src/)
export PYTHONPATH="$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export SEGEXP_OUTPUT_DIR=${SEGEXP_OUTPUT_DIR:-/tmp/segexp-runs} WANDB_MODE=offline

{ nvidia-smi; "$PY" -c "import sys, torch, pytorch_lightning as pl, torchmetrics, hydra, albumentations as A
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| lightning', pl.__version__, '| torchmetrics', torchmetrics.__version__, '| hydra', hydra.__version__,
      '| albumentations', A.__version__, '| cpus', __import__('os').cpu_count())"; } > "$OUT_DIR/env.txt" 2>&1
log "environment: $(tail -1 "$OUT_DIR/env.txt")"
status=0
for stage in $STAGES; do
  case $stage in
    tests)
      log "CUDA tests (pytest -m gpu) -> gpu-tests.log"
      "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" tests/test_gpu.py tests/test_syncbn_gpu.py \
        -rs > "$OUT_DIR/gpu-tests.log" 2>&1 || status=1
      log "$(tail -1 "$OUT_DIR/gpu-tests.log")" ;;
    bench)
      log "benchmark -> bench.log, bench.json"
      "$PY" -m segexp.cli.bench --json "$OUT_DIR/bench.json" > "$OUT_DIR/bench.log" 2>&1 || status=1
      tail -n 20 "$OUT_DIR/bench.log" | tee -a "$OUT_DIR/summary.txt" ;;
    proxy)
      if [ -z "${SEGEXP_DATA_DIR:-}" ] && [ -d .camvid ]; then
        mkdir -p /tmp/segexp-data && ln -sfn "$REPO/.camvid" /tmp/segexp-data/camvid
        export SEGEXP_DATA_DIR=/tmp/segexp-data
      fi
      log "proxy: deeplabv3.t5 under gpu_proxy, seeds ${SEEDS:-1} -> proxy.log"
      "$PY" -m segexp.cli.table run deeplabv3.t5 --profile gpu_proxy --seeds "${SEEDS:-1}" \
        ${ROWS:+--rows "$ROWS"} > "$OUT_DIR/proxy.log" 2>&1 || status=1
      cp experiments/results/deeplabv3.t5.gpu_proxy.md "$OUT_DIR/" 2>/dev/null
      grep -h '^| `' "$OUT_DIR/deeplabv3.t5.gpu_proxy.md" 2>/dev/null | tee -a "$OUT_DIR/summary.txt" ;;
    *) log "unknown stage $stage (tests, bench, proxy)"; status=2 ;;
  esac
done
if [ -d "$SEGEXP_OUTPUT_DIR" ]; then
  cp experiments/results/*gpu_proxy* "$SEGEXP_OUTPUT_DIR/" 2>/dev/null
  (cd "$SEGEXP_OUTPUT_DIR" && find . -type f \( -name '*.json' -o -name '*.log' -o -name '*.csv' -o -name '*.yaml' \
     -o -name '*.md' -o -name '*.png' \) -size -2M -print0 | tar czf "$OUT_DIR/runs.tar.gz" --null -T - 2>/dev/null)
fi
log "done (status $status); results in $OUT_DIR"
exit $status
