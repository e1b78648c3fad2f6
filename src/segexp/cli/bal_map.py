"""``segexp-bal-map [OVERRIDE ...] [--split S] [--index I] [--out PNG]``: picture of a BAL weight map.

Writes one PNG of three panels side by side, under a one-line header: a dataset image, its label coloured with
the dataset's palette (void black), and the boundary-aware loss's pixel weights ``E_G`` (Yu, PAC + BAL paper,
Eq. 3, :mod:`segexp.models.losses.boundary_aware`) in the viridis colour scale from 0 to the map's maximum,
void pixels (no loss) white. OVERRIDEs are segexp-train's; the defaults are ``dataset=camvid loss=bal``, so
``loss.kernel=linear loss.size=25 loss.down=2`` show another row of the paper's Table 1. The dataset is built
through its class from the ``dataset`` config (``dataset.root=...`` to point elsewhere), without transforms:
the image and label at their stored size. ``--colors 256`` quantises the picture (median cut) to keep a
CamVid picture under 150 KB (``docs/bal_map.png``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from matplotlib import colormaps
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from segexp.cli.precheck import check_command_line, exit_on_config_error
from segexp.config import ConfigError, compose_config
from segexp.data.datasets.base import IGNORE_INDEX, DatasetError, SegmentationDataset
from segexp.models.losses.boundary_aware import BoundaryAwareLoss
from segexp.overrides import override_key
from segexp.targets import TRUST_TARGETS_FLAG, trust_targets
from segexp.training.build import validate

HEADER = 18
"""Height in pixels of the text line above the panels."""

DEFAULTS = ("dataset=camvid", "loss=bal")
VOID_LABEL = (0, 0, 0)
VOID_WEIGHT = (255, 255, 255)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="segexp-bal-map",
        description="Write a PNG of an image, its label and the boundary-aware loss's weight map E_G.",
        epilog="e.g. segexp-bal-map loss.kernel=linear loss.size=25 --index 3 --out docs/bal_map.png",
    )
    parser.add_argument("overrides", nargs="*", help="segexp-train overrides (default dataset=camvid loss=bal)")
    parser.add_argument("--split", default="val", help="dataset split (default val)")
    parser.add_argument("--index", type=int, default=0, help="sample index in the split (default 0)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bal_map.png"), help="PNG to write")
    parser.add_argument("--colors", type=int, default=0,
                        help="quantise the picture to this many colours (median cut) for a smaller file; 0: full RGB")
    parser.add_argument(TRUST_TARGETS_FLAG, action="store_true",
                        help="allow _target_ values outside the allowed packages (see segexp-train --help)")
    return parser.parse_args(list(argv))


def with_defaults(overrides: Sequence[str]) -> list[str]:
    """``dataset=camvid loss=bal`` unless the overrides choose a dataset or loss themselves."""
    chosen = {override_key(arg) for arg in overrides}
    return [d for d in DEFAULTS if override_key(d) not in chosen] + list(overrides)


def colour_label(label: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(H, W) training ids -> (H, W, 3) uint8 colours from ``palette``; void (and any id without a colour) black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[IGNORE_INDEX] = VOID_LABEL
    return lut[label.astype(np.uint8)]


def colour_weights(weights: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) E_G -> (H, W, 3) uint8 viridis from 0 to the maximum; pixels outside ``valid`` white."""
    top = float(weights.max()) or 1.0
    rgb = (colormaps["viridis"](np.clip(weights / top, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)
    rgb[~valid] = VOID_WEIGHT
    return rgb


def describe(loss: BoundaryAwareLoss) -> str:
    sigma = f" sigma {loss.sigma:g}" if loss.kernel_kind == "gaussian" else ""
    return f"{loss.kernel_kind} down {loss.down} size {loss.size}{sigma} beta {loss.beta:g}"


def bal_picture(image: np.ndarray, label: np.ndarray, weights: np.ndarray,
                palette: Sequence[tuple[int, int, int]], title: str) -> Image.Image:
    """The three panels (image | coloured label | E_G) side by side under a ``HEADER``-pixel title line."""
    height, width = label.shape
    valid = label != IGNORE_INDEX
    canvas = Image.new("RGB", (3 * width, height + HEADER), (255, 255, 255))
    for i, panel in enumerate((image, colour_label(label, palette), colour_weights(weights, valid))):
        canvas.paste(Image.fromarray(panel), (i * width, HEADER))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0))
    return canvas


def load_sample(cfg: DictConfig, split: str, index: int) -> tuple[SegmentationDataset, np.ndarray, np.ndarray]:
    """The dataset of ``split`` built from ``cfg.dataset`` (no transform) and sample ``index``'s image and label."""
    try:
        dataset: SegmentationDataset = instantiate(cfg.dataset, split=split)
    except Exception as err:  # hydra wraps the dataset's DatasetError (missing root, unknown split)
        cause = err.__cause__ if isinstance(err.__cause__, DatasetError) else err
        if not isinstance(cause, DatasetError):
            raise
        raise ConfigError(str(cause)) from err
    if not -len(dataset) <= index < len(dataset):
        raise ConfigError(f"--index {index}: split {split!r} of {type(dataset).__name__} has {len(dataset)} samples")
    sample = dataset[index]
    return dataset, sample["image"].permute(1, 2, 0).numpy(), sample["label"].numpy()


def write_bal_map(cfg: DictConfig, split: str, index: int, out: Path, colors: int = 0) -> Path:
    loss = instantiate(cfg.loss)
    if not isinstance(loss, BoundaryAwareLoss):
        raise ConfigError(f"loss={cfg.loss.get('_target_')}: segexp-bal-map draws the boundary-aware loss; "
                          "use loss=bal")
    dataset, image, label = load_sample(cfg, split, index)
    weights = loss.edge_weights(torch.from_numpy(label).long()[None])[0].numpy()
    name = Path(dataset.samples[index][0]).name
    valid = label != IGNORE_INDEX
    inner = float(weights[valid].min()) if valid.any() else float("nan")
    title = (f"{type(dataset).__name__} {split}[{index}] {name} | label | BAL E_G ({describe(loss)}): "
             f"0 -> {float(weights.max()):.2f} (viridis), labelled min {inner:.2f}, white = void")
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = bal_picture(image, label, weights, dataset.PALETTE, title)
    if colors:
        picture = picture.quantize(colors, method=Image.Quantize.MEDIANCUT)
    picture.save(out, optimize=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.trust_targets:
        trust_targets()
    if not 0 <= args.colors <= 256:
        raise SystemExit(f"segexp-bal-map: --colors {args.colors}: give 0 (full RGB) or 1-256")
    overrides = with_defaults(args.overrides)
    exit_on_config_error(lambda: check_command_line(overrides, "train"))
    cfg = compose_config(overrides)
    exit_on_config_error(lambda: validate(cfg))
    out: list[Path] = []
    exit_on_config_error(lambda: out.append(write_bal_map(cfg, args.split, args.index, args.out, args.colors)))
    print(f"wrote {out[0]}")


if __name__ == "__main__":
    main()
