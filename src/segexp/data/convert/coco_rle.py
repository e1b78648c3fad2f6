"""COCO run-length encoding (RLE) of binary masks, without pycocotools.

COCO stores a mask as column-major runs starting with a run of zeros, either uncompressed (a list of
integer ``counts``) or compressed into the LEB128-like string of the COCO API's ``rleToString``
(``maskApi.c``). These functions decode and encode both forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rle_counts_from_string(encoded: str) -> list[int]:
    """Decode the COCO API's compressed RLE string (``maskApi.c: rleFrString``) into run lengths.

    Each count is written as 5-bit groups, least significant first, each char = group + 48 with bit
    0x20 set while more groups follow; the last group's bit 0x10 is the sign. From the fourth count on,
    the stored value is the difference to the count two places earlier.
    """
    counts: list[int] = []
    position = 0
    while position < len(encoded):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(encoded):
                raise ValueError(f"truncated compressed RLE string {encoded!r}")
            char = ord(encoded[position]) - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths as the COCO API's compressed RLE string (``maskApi.c: rleToString``)."""
    chars = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            chars.append(chr((char | (0x20 if more else 0)) + 48))
    return "".join(chars)


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """An ``HxW`` bool mask from column-major run lengths that alternate 0s and 1s, starting with 0s."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0 or runs.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(runs.sum())} (min {runs.min(initial=0)}), not {height}x{width}")
    values = np.arange(runs.size) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


def rle_encode(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a bool mask, starting with a (possibly empty) run of 0s."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs
