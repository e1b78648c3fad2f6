#!/usr/bin/env bash
# The one command of a lent GPU machine (README, "GPU machines"): stages ordered by the value of their evidence,
# each under its own timeout, all under one time budget (default 420 s: with the machine's start and the
# transfers, about 9 minutes of device time):
#   scripts/device_check.sh [OUT_DIR] [--budget SECONDS] [--stage-budget NAME=SECONDS ...] [STAGE ...]
#   stages: env tests proxy bench slow (default all, always in this order); OUT_DIR: default $OUT, else outputs/device
#   scripts/device_check.sh --plan          # the stage budgets and the estimated device time; runs nothing
# scripts/device_stages.py does the work and documents each stage and file; this wrapper keeps every process off
# the network (the exports below, the same as device_stages.OFFLINE_ENV) and picks the python: $PYTHON, default
# python3, the image's, with its CUDA torch. The call carries .whl/ and .camvid/ (scripts/device_prepare.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/device_stages.py "$@"
