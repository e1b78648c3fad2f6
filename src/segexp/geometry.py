"""Image geometry shared by training, the model and inference: the size of an image rescaled by a factor.

One rule everywhere (random training rescales, the model's multi-scale streams, multi-scale test inputs): the
scaled size is rounded half up (``floor(x * scale + 0.5)``; 513 x 0.75 = 384.75 -> 385, 375 x 0.5 = 187.5 -> 188),
at least one pixel. Python's ``round`` would round 186.5 to 186 (half to even), so the same image would get two
sizes from two code paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(height, width)`` times ``scale``, rounded half up, at least 1 pixel."""
    return max(1, math.floor(size[0] * scale + 0.5)), max(1, math.floor(size[1] * scale + 0.5))
