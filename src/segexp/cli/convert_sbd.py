"""``segexp-convert-sbd --sbd-root <SBD> --voc-root <VOC2012>``: SBD labels to VOC-aug PNGs and splits (run once).

See :mod:`segexp.data.convert.sbd_to_voc` for what is written.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from segexp.data.convert.sbd_to_voc import convert_sbd
from segexp.data.datasets.base import DatasetError


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``segexp-convert-sbd --sbd-root ... --voc-root ...``."""
    parser = argparse.ArgumentParser(
        prog="segexp-convert-sbd",
        description="Convert SBD cls/*.mat labels to VOC2012/SegmentationClassAug PNGs and train_aug/val splits.",
    )
    parser.add_argument("--sbd-root", type=Path, required=True, help="SBD 'dataset' folder (cls/, train.txt, val.txt)")
    parser.add_argument("--voc-root", type=Path, required=True, help="VOC2012 folder (JPEGImages/, SegmentationClass/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        count = convert_sbd(args.sbd_root, args.voc_root)
    except DatasetError as err:
        parser.exit(1, f"error: {err}\n")
    print(f"wrote {count} label PNGs to {args.voc_root / 'SegmentationClassAug'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
