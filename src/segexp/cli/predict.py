"""``segexp-predict ckpt=<last.ckpt> input=<image | folder | glob> output=<folder>``: a trained model's masks of new
images.

The model is rebuilt as ``segexp-eval`` rebuilds it (:mod:`segexp.cli.evaluate`: the config stored in the
checkpoint, read with ``weights_only=True``, its ``_target_`` values checked unless ``--trust-targets``), with the
checkpoint's inference settings unless ``inference.<key>=...`` / ``inference=slide`` / ``model.eval_output_stride=``
say otherwise (scales, flip, sliding window, padding, output stride). The images are scored by segexp-eval's own
path: an unlabelled split of the input images in segexp-eval's loader and validation step, on one device, so a
prediction here is the prediction segexp-eval makes of the same image. The device is the GPU when there is one
(``trainer.accelerator=cpu`` to choose), at the checkpoint's precision when it trained on a GPU, else fp32.

Per input image ``<name>.<ext>`` (a folder's subfolders are kept) it writes, at the image's own size:

* ``<output>/masks/<name>.png``: the class ids, a palette PNG (pixel value = class id, drawn in the class colours);
* ``<output>/overlays/<name>.png``: the image blended with the class colours (``overlay_alpha``);
* ``<output>/probabilities/<name>.npy`` with ``probabilities=true``: float32 ``(classes, H, W)`` softmax scores
  (with several scales or flips: their average, the scores segexp-eval takes the argmax of);

and ``<output>/classes.yaml`` (names and palette: the mask values' meaning, readable by ``dataset=folder``).
Files already in ``output`` are never replaced unless ``overwrite=true``: the run stops before any work, naming them.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import Tensor

from segexp import atomic
from segexp.cli.bal_map import colour_label
from segexp.cli.evaluate import inference_settings, load_checkpoint, run_config, stored_config_origin
from segexp.cli.precheck import exit_on_config_error, input_errors_exit, run_cli
from segexp.config import CONF_DIR, ConfigError
from segexp.data.datamodule import SegmentationDataModule
from segexp.data.datasets.base import _PIL_ERRORS, Colour, DatasetError, SegmentationDataset, load_image
from segexp.data.datasets.folder import IMAGE_SUFFIXES, is_image_file, list_image_folder
from segexp.data.datasets.voc import voc_colormap
from segexp.data.submission import palette_png
from segexp.training.build import build_module, validate
from segexp.training.harness import build_trainer, failure_record, output_dir_of

PREDICT_SPLIT = "predict"
OUTPUT_FOLDERS = {"mask": "masks", "overlay": "overlays", "probabilities": "probabilities"}
CLASSES_FILE = "classes.yaml"
MISSING_KEYS = {
    "ckpt": "the segexp-train checkpoint, e.g. ckpt=outputs/train/runs/<time>/checkpoints/last.ckpt",
    "input": "an image, a folder of images or a glob, e.g. input=photos/ or input='photos/*.jpg'",
    "output": "the folder the masks and overlays go to, e.g. output=predictions/",
}


# ------------------------------------------------------------------------------------------------ the inputs


def input_images(spec: str) -> tuple[list[Path], list[Path]]:
    """The images ``input=`` names and the output name of each (its path without suffix): a file (its name), a
    folder (every image under it, its path in the folder) or a glob (each match's name). Raise
    :class:`ConfigError` naming ``input`` when it names no image or two images would get one output name."""
    path = Path(spec).expanduser()
    if path.is_file():
        images, names = [path], [Path(path.stem)]
    elif path.is_dir():
        images = list_image_folder(path)
        names = [image.relative_to(path).with_suffix("") for image in images]
        if not images:
            raise ConfigError(f"input={spec}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif glob.has_magic(spec):
        images = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)
                        if Path(p).is_file() and is_image_file(Path(p)))
        names = [Path(image.stem) for image in images]
        if not images:
            raise ConfigError(f"input={spec}: the pattern matches no image files ({', '.join(IMAGE_SUFFIXES)})")
    else:
        raise ConfigError(f"input={spec}: no such file or folder (give an image, a folder or a glob pattern)")
    check_unique_names(images, names, spec)
    return images, names


def check_unique_names(images: Sequence[Path], names: Sequence[Path], spec: str) -> None:
    """Raise :class:`ConfigError` naming both images when two inputs would write the same output files."""
    first: dict[Path, Path] = {}
    for image, name in zip(images, names):
        if name in first:
            raise ConfigError(f"input={spec}: {first[name]} and {image} would both be written as '{name}'; "
                              "predict them into separate output folders")
        first[name] = image


def check_one_size(images: Sequence[Path], batch_size: int) -> None:
    """A batch holds images of one size: with ``batch_size`` > 1, raise :class:`ConfigError` naming two images of
    different sizes (read from the file headers)."""
    if batch_size <= 1:
        return
    sizes: dict[tuple[int, int], Path] = {}
    for image in images:
        try:
            with Image.open(image) as opened:
                sizes.setdefault(opened.size, image)
        except FileNotFoundError as err:
            raise DatasetError(f"image file not found: {image}") from err
        except _PIL_ERRORS as err:
            raise DatasetError(f"cannot read image file {image}: {err}") from err
        if len(sizes) > 1:
            (size_a, a), (size_b, b) = sizes.items()
            raise ConfigError(f"batch_size={batch_size} needs images of one size, but {a} is {size_a[0]}x{size_a[1]} "
                              f"and {b} is {size_b[0]}x{size_b[1]} (WxH); use batch_size=1")


class PredictionInputs(SegmentationDataset):
    """The images to predict as a split without labels (every label is IGNORE_INDEX), so that segexp-eval's loader
    and validation step score them unchanged. ``root`` is the folder that holds them all."""

    def __init__(self, images: Sequence[Path], split: str = PREDICT_SPLIT, transform: Any = None) -> None:
        self.images = [Path(image) for image in images]
        super().__init__(Path(os.path.commonpath([image.resolve().parent for image in self.images])), split, transform)

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        return [(image, None) for image in self.images]


def inputs_datamodule(images: Sequence[Path], run: DictConfig, batch_size: int, num_workers: int) -> \
        SegmentationDataModule:
    """segexp-eval's data module for ``images``: its eval transform, normalisation (the run's mean/std, on the
    device where the run would do it), loader and sampler, with ``batch_size`` images per batch."""
    data = OmegaConf.to_container(run.data, resolve=True) if run.get("data") is not None else {}
    kept = {key: data[key] for key in ("mean", "std", "normalize_on_device", "prefetch_factor") if key in data}
    return SegmentationDataModule(
        dataset=functools.partial(PredictionInputs, tuple(images)), val_split=PREDICT_SPLIT,
        val_batch_size=batch_size, num_workers=num_workers, seed=int(run.get("seed") or 0), **kept,
    )


# ------------------------------------------------------------------------------------------------ the outputs


@dataclass(frozen=True)
class OutputFiles:
    """Where one image's prediction goes."""

    mask: Path
    overlay: Path
    probabilities: Path | None


def output_files(output: Path, names: Sequence[Path], probabilities: bool) -> list[OutputFiles]:
    return [
        OutputFiles(
            mask=output / OUTPUT_FOLDERS["mask"] / f"{name}.png",
            overlay=output / OUTPUT_FOLDERS["overlay"] / f"{name}.png",
            probabilities=output / OUTPUT_FOLDERS["probabilities"] / f"{name}.npy" if probabilities else None,
        )
        for name in names
    ]


def classes_text(class_names: Sequence[str], palette: Sequence[Colour]) -> str:
    """``classes.yaml`` of the output: what each mask value means, in the format ``dataset=folder`` reads."""
    data = {"names": list(class_names), "palette": [list(colour) for colour in palette[: len(class_names)]]}
    return yaml.safe_dump(data, default_flow_style=None, sort_keys=False)


def check_no_overwrite(output: Path, files: Sequence[OutputFiles], classes: str, overwrite: bool) -> None:
    """Raise :class:`ConfigError` naming the files this run would replace in ``output`` (none is replaced without
    ``overwrite=true``); a ``classes.yaml`` with the same text is not replaced, only rewritten."""
    planned = [path for entry in files for path in (entry.mask, entry.overlay, entry.probabilities) if path]
    existing = [path for path in planned if path.exists()]
    classes_file = output / CLASSES_FILE
    if classes_file.exists() and classes_file.read_text() != classes:
        existing.append(classes_file)
    if existing and not overwrite:
        shown = ", ".join(str(path.relative_to(output)) for path in existing[:3])
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise ConfigError(f"output={output} already holds {len(existing)} of the files this run writes ({shown}"
                          f"{more}); pass overwrite=true to replace them, or choose another output folder")


def overlay(image: np.ndarray, prediction: np.ndarray, palette: Sequence[Colour], alpha: float) -> np.ndarray:
    """``image`` blended with the class colours of ``prediction``: ``(1 - alpha) * image + alpha * colour``."""
    colours = colour_label(prediction, palette).astype(np.float32)
    return np.rint((1.0 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)


class PredictionWriter(pl.Callback):
    """Writes the mask, overlay (and probabilities) of each image as its scores come out of the validation step,
    which returns the full-size ``(B, C, H, W)`` scores: logits for plain inference, else averaged probabilities."""

    def __init__(self, files: Sequence[OutputFiles], palette: Sequence[Colour], alpha: float,
                 scores_are_probabilities: bool) -> None:
        self.files = list(files)
        self.palette = tuple(palette)
        self.alpha = alpha
        self.scores_are_probabilities = scores_are_probabilities
        self.written = 0

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        dataset = trainer.val_dataloaders.dataset
        scores = outputs.float()
        predictions = scores.argmax(dim=1).cpu().numpy()
        for k, index in enumerate(batch["index"].tolist()):
            self.write(dataset.samples[index][0], self.files[index], predictions[k], scores[k])

    def write(self, image_path: Path, files: OutputFiles, prediction: np.ndarray, scores: Tensor) -> None:
        for path in (files.mask, files.overlay, files.probabilities):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_png(files.mask, palette_png(prediction, self.palette))
        picture = overlay(load_image(image_path), prediction, self.palette, self.alpha)
        atomic.write_png(files.overlay, Image.fromarray(picture, mode="RGB"))
        if files.probabilities is not None:
            probabilities = scores if self.scores_are_probabilities else scores.softmax(dim=0)
            array = probabilities.cpu().numpy().astype(np.float32)
            atomic.write_with(files.probabilities, functools.partial(save_npy, array=array))
        self.written += 1


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` in NumPy's ``.npy`` format at exactly ``path`` (``np.save`` given a name would add ``.npy``)."""
    with path.open("wb") as file:
        np.save(file, array)


class PredictionProgressBar(TQDMProgressBar):
    """Lightning's progress bar (on stdout), saying what it counts: ``Predicting: 40%|####  | 2/5``."""

    @property
    def validation_description(self) -> str:
        return "Predicting"

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if self.val_progress_bar is not None:
            self.val_progress_bar.set_description(self.validation_description)  # not "... DataLoader 0"


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class TrainedClasses:
    """What :func:`segexp.training.build.build_module` reads of a data module: the classes the checkpoint predicts
    (the data it trained on need not be here)."""

    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prediction_trainer(chosen: DictConfig) -> DictConfig:
    """The ``trainer`` node with the GPU chosen when there is one and the command line chose no device
    (:func:`segexp.training.eval_settings.trainer_of_checkpoint` then fills the precision from the checkpoint)."""
    trainer = chosen.copy()
    if trainer.get("accelerator") is None and torch.cuda.is_available():
        trainer.accelerator = "gpu"
    return trainer


def trained_palette(run: DictConfig, num_classes: int) -> tuple[Colour, ...]:
    """The colours of the dataset the checkpoint trained on; the VOC colour map when that dataset (its class file)
    is not at hand or has fewer colours than classes."""
    try:
        factory = instantiate(run.dataset, _partial_=True)
        palette = tuple(SegmentationDataModule(dataset=factory).palette)
    except (DatasetError, ConfigError, OSError, ImportError, InstantiationException):
        palette = ()
    return palette if len(palette) >= num_classes else voc_colormap(num_classes)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image of ``cfg.input`` into ``cfg.output``; returns what was written and how."""
    checkpoint = load_checkpoint(str(cfg.ckpt))
    cfg.trainer = prediction_trainer(cfg.trainer)
    run = run_config(cfg, checkpoint["segexp"]["config"])
    validate(run, origin=stored_config_origin(cfg))
    images, names = input_images(str(cfg.input))
    batch_size = int(cfg.batch_size)
    check_one_size(images, batch_size)
    classes = TrainedClasses(tuple(checkpoint["segexp"]["class_names"]))
    palette = trained_palette(run, classes.num_classes)
    output = Path(str(cfg.output)).expanduser().resolve()
    files = output_files(output, names, bool(cfg.probabilities))
    classes_yaml = classes_text(classes.class_names, palette)
    check_no_overwrite(output, files, classes_yaml, bool(cfg.overwrite))

    datamodule = inputs_datamodule(images, run, batch_size, int(cfg.num_workers))
    module = build_module(run, classes)  # type: ignore[arg-type]  # it reads the class names only
    module.load_state_dict(checkpoint["state_dict"])
    writer = PredictionWriter(files, palette, float(cfg.overlay_alpha), not module.inference.is_plain)
    bar = [PredictionProgressBar()] if run.trainer.get("enable_progress_bar", True) else []
    trainer = build_trainer(run, output_dir_of(run), loggers=[], callbacks=[writer, *bar])
    output.mkdir(parents=True, exist_ok=True)
    atomic.write_text(output / CLASSES_FILE, classes_yaml)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    summary = {"images": writer.written, "output": str(output), "ckpt": str(Path(str(cfg.ckpt)).resolve()),
               "device": str(trainer.strategy.root_device), "precision": str(trainer.precision),
               "inference": inference_settings(module)}
    print(f"wrote the masks and overlays of {writer.written} images to {output} "
          f"({summary['device']}, {summary['precision']})")
    return summary


def require_keys(cfg: DictConfig) -> None:
    for key, what in MISSING_KEYS.items():
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key}=<...> is required: {what}")
    alpha = cfg.get("overlay_alpha")
    if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"overlay_alpha must be a number in [0, 1], got {alpha!r}")
    if not isinstance(cfg.get("batch_size"), int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {cfg.get('batch_size')!r}")


def run_prediction(cfg: DictConfig) -> dict[str, Any]:
    """:func:`predict` after the checks of its own keys; any failure leaves ``error.json`` in the run folder."""
    require_keys(cfg)
    with failure_record(output_dir_of(cfg)):
        return predict(cfg)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    exit_on_config_error(lambda: require_keys(cfg))
    with input_errors_exit("segexp-predict"):
        run_prediction(cfg)


def main() -> None:
    """Console entry point (see :func:`segexp.cli.precheck.run_cli`)."""
    run_cli(hydra_main, "predict")


if __name__ == "__main__":
    main()
