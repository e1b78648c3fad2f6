#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what scripts/device_check.sh needs on a GPU machine without it:
#   .whl/    wheels (CPython 3.12, x86-64 Linux) of segexp's dependencies that a CUDA image usually lacks,
#            at the versions this checkout's .venv resolved (so the GPU run uses what the tests here use);
#   .camvid/ CamVid (from ../shared/data/camvid) with JPEG images (quality 92) and the original PNG labels,
#            small enough to travel with the working tree (the device tool carries at most 64 MiB).
# Both folders are git-ignored (.git/info/exclude). Usage: scripts/device_prepare.sh [--no-camvid]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=.venv/bin/python
test -x "$VENV_PY" || make install
# Packages a CUDA image with torch/lightning/torchmetrics/opencv usually lacks (see README, "GPU machines").
PACKAGES="hydra-core omegaconf antlr4-python3-runtime albumentations albucore pydantic pydantic-core
annotated-types typing-inspection typing-extensions stringzilla simsimd"
pins=()
for name in $PACKAGES; do
  version=$("$VENV_PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  test -n "$version" || { echo "device_prepare: $name is not installed in .venv" >&2; exit 1; }
  pins+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${tag}_x86_64"); done
for pin in "${pins[@]}"; do
  "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$pin" 2>/dev/null \
  || "$VENV_PY" -m pip wheel -q --no-deps -w .whl "$pin"   # sdist-only (antlr4): build a pure-Python wheel
done
folders=(.whl)
if [ "${1:-}" != "--no-camvid" ]; then
  "$VENV_PY" scripts/pack_camvid.py ../shared/data/camvid .camvid
  folders+=(.camvid)
fi
du -sh "${folders[@]}" | sed 's/^/device_prepare: /'
