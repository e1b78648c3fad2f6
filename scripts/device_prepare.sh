#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what scripts/device_check.sh needs on a GPU machine without it:
#   .whl/    wheels of segexp's dependencies that the CUDA image lacks, for CPython 3.12 on manylinux x86-64, at
#            the versions this checkout's .venv resolved (so the GPU run uses what the tests here use), and
#            bench-flops.json: the benchmark's forward FLOP counts, made here so the lease spends no time on them;
#   .camvid/ CamVid (from ../shared/data/camvid) with JPEG images (quality 92) and the original PNG labels.
# Fails loudly when a wheel is not for CPython 3.12 manylinux x86-64 (scripts/device_carry.py wheels), and
# prints what a call carries against the device tool's 64 MiB (scripts/device_carry.py size). Both folders are
# git-ignored (.gitignore; added to .git/info/exclude where a checkout lacks the entries), so they are never
# committed, and a call carries them only when named: "carry": [".whl", ".camvid"].
# Usage: scripts/device_prepare.sh [--no-camvid]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=.venv/bin/python
test -x "$VENV_PY" || make install
# Packages a CUDA image with torch/lightning/torchmetrics/opencv usually lacks (see README, "GPU machines").
PACKAGES="hydra-core omegaconf antlr4-python3-runtime albumentations albucore pydantic pydantic-core
annotated-types typing-inspection typing-extensions stringzilla simsimd"
# Published as source only and pure Python: built here into a py3-none-any wheel, which any python installs.
PURE_SDISTS=" antlr4-python3-runtime "
fail() { echo "device_prepare: $*" >&2; exit 1; }

exclude=$(git rev-parse --git-path info/exclude)
for folder in .whl .camvid; do
  git check-ignore -q "$folder/" || { mkdir -p "$(dirname "$exclude")"; echo "/$folder/" >> "$exclude"; }
  git check-ignore -q "$folder/" || fail "$folder/ is not git-ignored even after adding it to $exclude"
done

pins=()
for name in $PACKAGES; do
  version=$("$VENV_PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  test -n "$version" || fail "$name is not installed in .venv"
  pins+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
           manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${tag}_x86_64"); done
said=$(mktemp)
trap 'rm -f "$said"' EXIT
for pin in "${pins[@]}"; do
  name=${pin%%==*}
  if "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d .whl "$pin" 2> "$said"; then
    continue
  fi
  [[ "$PURE_SDISTS" == *" $name "* ]] || fail "no CPython 3.12 manylinux x86-64 wheel of $pin; pip said: $(tail -3 "$said")"
  "$VENV_PY" -m pip wheel -q --no-deps -w .whl "$pin" || fail "could not build a wheel of $pin (pure Python)"
done
"$VENV_PY" scripts/device_carry.py wheels .whl --require $PACKAGES
"$VENV_PY" -m segexp.cli.bench --write-flops .whl/bench-flops.json
folders=(.whl)
if [ "${1:-}" != "--no-camvid" ]; then
  "$VENV_PY" scripts/pack_camvid.py ../shared/data/camvid .camvid
  folders+=(.camvid)
fi
"$VENV_PY" scripts/device_carry.py size --carry "${folders[@]}"
