"""The scripts that carry a run to a GPU machine without registries (README, "GPU machines"), run here:
``scripts/pack_camvid.py`` (CamVid with JPEG images, the data of the GPU proxy) and
``scripts/device_check.sh`` (its CUDA tests skip without CUDA, and it writes its summary and environment)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segexp.config import REPO_ROOT
from segexp.data.datasets.camvid import CamVid
from tests.fixtures import make_camvid

PACK = REPO_ROOT / "scripts" / "pack_camvid.py"


def pack(source: Path, target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PACK), str(source), str(target), *args], capture_output=True,
                          text=True, timeout=120)


def jpeg_roundtrip(path: Path, quality: int) -> np.ndarray:
    """What PIL's own JPEG encoder (4:4:4 chroma) makes of the image at ``path``, decoded."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_packed_camvid_loads_with_jpeg_images_and_the_original_labels(tmp_path: Path) -> None:
    source = make_camvid(tmp_path, {"train": 3, "val": 2})
    target = tmp_path / "packed"
    done = pack(source, target, "--quality", "95")
    assert done.returncode == 0, done.stderr
    assert "{'train': 3, 'val': 2}" in done.stdout and not (tmp_path / "packed.partial").exists()
    for split in ("train", "val"):
        original, packed = CamVid(str(source), split), CamVid(str(target), split)
        assert [p.suffix for p, _ in packed.samples] == [".jpg"] * len(original)
        for index, (image, label) in enumerate(original.samples):
            assert label is not None
            np.testing.assert_array_equal(packed[index]["label"].numpy(), original[index]["label"].numpy())
            assert (target / f"{split}annot" / label.name).read_bytes() == label.read_bytes()
            np.testing.assert_array_equal(packed[index]["image"].permute(1, 2, 0).numpy(),
                                          jpeg_roundtrip(image, 95))


def test_pack_camvid_refuses_a_folder_that_is_not_camvid_and_keeps_the_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "packed"
    assert pack(make_camvid(tmp_path, {"train": 2, "val": 1}), target).returncode == 0
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    (tmp_path / "empty").mkdir()
    refused = pack(tmp_path / "empty", target)
    assert refused.returncode != 0 and f"{tmp_path / 'empty'} is not a CamVid folder" in refused.stderr
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before


@pytest.mark.slow
def test_device_check_runs_its_tests_stage_without_cuda(tmp_path: Path) -> None:
    """The one command of a GPU session, on this CPU: the dependencies are importable, so nothing is installed;
    the CUDA tests are collected and skip with their reason; summary and environment are written."""
    env = {**os.environ, "PYTHON": sys.executable, "SEGEXP_OUTPUT_DIR": str(tmp_path / "runs")}
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "device_check.sh"), str(tmp_path / "out"), "tests"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert f"environment: python {sys.version.split()[0]} | torch {__import__('torch').__version__}" in summary
    assert "skipped" in summary and "failed" not in summary and "done (status 0)" in summary
    log = (tmp_path / "out" / "gpu-tests.log").read_text()
    assert "CUDA-only check: no CUDA device here" in log and "error" not in log.lower()
