"""``segexp-convert-coco --root <coco> [--out <dir>]``: MS-COCO annotations to VOC-class label PNGs (run once).

See :mod:`segexp.data.convert.coco_to_voc` for what is written.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from segexp.data.convert.coco_to_voc import LABEL_FOLDER, SPLITS, convert_coco
from segexp.data.datasets.base import DatasetError


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``segexp-convert-coco --root <coco> [--out <dir>]``."""
    parser = argparse.ArgumentParser(
        prog="segexp-convert-coco",
        description="Convert MS-COCO instance annotations to VOC-class index PNGs (DeepLabv3 COCO pretraining).",
    )
    parser.add_argument("--root", type=Path, required=True, help="COCO folder (annotations/, train2017/, val2017/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder for voc_labels/ (default: --root)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to convert")
    parser.add_argument("--overwrite", action="store_true", help="convert again splits already converted")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        kept = convert_coco(args.root, args.out, args.splits, args.overwrite)
    except DatasetError as err:
        parser.exit(1, f"error: {err}\n")
    out = args.out if args.out is not None else args.root
    for split, count in kept.items():
        print(f"{split}: {count} images with VOC-class instances in {out / LABEL_FOLDER / split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
