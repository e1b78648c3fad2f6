"""Re-encode a CamVid (SegNet layout) copy with JPEG images so it travels to a GPU machine.

    python scripts/pack_camvid.py ../shared/data/camvid .camvid [--quality 92]

Images become ``<split>/<name>.jpg`` (RGB, 4:4:4 chroma, the given quality); labels are copied unchanged
(lossless PNG, so the metrics are those of the original labels); ``<split>.txt`` lists the new pairs in the
published ``/SegNet/CamVid/<dir>/<file>`` form that :class:`segexp.data.datasets.camvid.CamVid` re-roots.
The output folder is replaced only after the whole copy is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from segexp.data.datasets.camvid import CamVid  # noqa: E402


def pack_split(source: Path, target: Path, split: str, quality: int) -> int:
    dataset = CamVid(root=str(source), split=split)
    lines = []
    for image_path, label_path in dataset.samples:
        assert label_path is not None
        image_out = target / split / f"{image_path.stem}.jpg"
        label_out = target / f"{split}annot" / label_path.name
        image_out.parent.mkdir(parents=True, exist_ok=True)
        label_out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image_path) as im:
            im.convert("RGB").save(image_out, quality=quality, subsampling=0)
        shutil.copyfile(label_path, label_out)
        lines.append(f"/SegNet/CamVid/{split}/{image_out.name} /SegNet/CamVid/{split}annot/{label_out.name}")
    (target / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--quality", type=int, default=92)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args()
    if not (args.source / "train.txt").is_file():
        sys.exit(f"pack_camvid: {args.source} is not a CamVid folder (no train.txt)")
    staging = args.target.with_name(args.target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    counts = {split: pack_split(args.source, staging, split, args.quality) for split in args.splits}
    shutil.rmtree(args.target, ignore_errors=True)
    staging.rename(args.target)
    print(f"pack_camvid: {counts} -> {args.target} (JPEG quality {args.quality})")


if __name__ == "__main__":
    main()
