"""What a run ran on: the versions of the packages its numbers depend on, and segexp's commit.

:func:`environment_facts` is the one place that collects them: ``metrics.json`` of every training and
evaluation run holds its result under ``"environment"``, and reports print it. It is cheap: a version is the
imported module's ``__version__`` (what runs) or else the installed distribution's (``importlib.metadata``),
nothing else is imported; only torch is, for its CUDA and cuDNN versions (every run imports it anyway), and that
initialises no CUDA device.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from segexp.config import REPO_ROOT, SOURCE_CHECKOUT

_OPENCV_DISTRIBUTIONS = (
    "opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python",
)
"""The distributions that install ``cv2``, in the order they are looked for (several can be installed side by
side; then the imported module's ``__version__`` tells which one runs)."""


def git_commit() -> str | None:
    """The source checkout's commit; None for an installed copy (whatever repository the current directory
    or the environment sits in is not the code that ran)."""
    if not SOURCE_CHECKOUT:
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(module: str, *distributions: str) -> str | None:
    """The version of ``module`` that runs: its ``__version__`` when it is already imported (what this process
    uses, whichever distribution or path it came from), else the installed version of the first of
    ``distributions`` that is installed; None when neither is there."""
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _torch_versions() -> tuple[str | None, str | None, str | None]:
    """(torch, CUDA, cuDNN) of the torch that runs; CUDA and cuDNN are None for a CPU build."""
    try:
        import torch
    except ImportError:
        return None, None, None
    cuda = torch.version.cuda
    cudnn = None
    if cuda is not None:  # a CPU build has no cuDNN to ask about
        try:
            number = torch.backends.cudnn.version()
        except Exception:  # a broken cuDNN install must not fail a finished run
            number = None
        cudnn = str(number) if number is not None else None
    return str(torch.__version__), cuda, cudnn


def environment_facts() -> dict[str, str | None]:
    """Versions of python, torch, CUDA and cuDNN (None without them), Lightning, torchmetrics, albumentations,
    numpy and OpenCV, segexp's version and git commit (None for an installed copy), and torch's CPU thread
    count; a package that is not installed is None."""
    torch_version, cuda, cudnn = _torch_versions()
    return {
        "python": platform.python_version(),
        "torch": torch_version,
        "cuda": cuda,
        "cudnn": cudnn,
        "pytorch_lightning": _version("pytorch_lightning", "pytorch-lightning"),
        "torchmetrics": _version("torchmetrics", "torchmetrics"),
        "albumentations": _version("albumentations", "albumentations"),
        "numpy": _version("numpy", "numpy"),
        "opencv": _version("cv2", *_OPENCV_DISTRIBUTIONS),
        "segexp": _version("segexp", "segexp"),
        "segexp_commit": git_commit(),
        "torch_threads": _torch_threads(),
    }


def _torch_threads() -> str | None:
    """The threads torch splits a CPU operation over: CPU results change with it (sums in another order), so
    a CPU figure is only reproduced with the same count (``make train`` pins 2)."""
    try:
        import torch
    except ImportError:
        return None
    return str(torch.get_num_threads())


def device_name(device: Any) -> str:
    """The name of a ``torch.device`` a run used: the CUDA device's product name (``NVIDIA H200``), else its
    type (``cpu``)."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
