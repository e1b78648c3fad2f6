"""``segexp-predict`` (segexp.cli.predict): segexp-eval's predictions of the same checkpoint, pixel for pixel, at the
input's size and name; overlays, probabilities, the input forms, the device and never overwriting."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from segexp.cli.bal_map import colour_label
from segexp.cli.evaluate import run_evaluation
from segexp.cli.predict import input_images, overlay, prediction_trainer, require_keys, run_prediction
from segexp.cli.train import run_training
from segexp.config import ConfigError, compose_config
from segexp.data.datasets.base import DatasetError
from tests.helpers.data_files import COLOUR_CLASSES, FOLDER_RUN, NAMES, PALETTE, make_folder, random_image, write_rgb

SIZES = [(40, 48), (36, 52)]
"""The val images come in two sizes (HxW): each prediction must keep its image's."""
INFERENCE = ["inference.scales=[0.75,1.0]", "inference.flip=true"]
"""Non-plain inference, so that the comparison covers the scale/flip averaging, not only one forward pass."""


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data root, last.ckpt)``: a 3-step checkpoint trained on a folder dataset whose val images differ in size."""
    tmp = tmp_path_factory.mktemp("folder_run")
    root = make_folder(tmp, splits={"train": 4, "val": 3}, classes_file=COLOUR_CLASSES)
    for i in range(3):  # val images of two sizes
        height, width = SIZES[i % 2]
        write_rgb(root / "images" / "val" / f"img{i}.jpg", random_image(10 + i, height, width))
        Image.fromarray(np.zeros((height, width), np.uint8), mode="L").save(root / "masks" / "val" / f"img{i}.png")
    cfg = compose_config([*FOLDER_RUN, "dataset=folder", f"dataset.root={root}", f"output_dir={tmp / 'train'}"])
    run_training(cfg)
    return root, tmp / "train" / "checkpoints" / "last.ckpt"


def predict_cfg(tmp_path: Path, *overrides: str):
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    return compose_config([f"output_dir={out}", "num_workers=0", "trainer.enable_progress_bar=false",
                           "trainer.accelerator=cpu", *overrides], config_name="predict")


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_predict_reproduces_the_predictions_of_segexp_eval_pixel_for_pixel(folder_run, tmp_path: Path) -> None:
    root, ckpt = folder_run
    eval_cfg = compose_config([f"ckpt={ckpt}", "save_predictions=true", "data.num_workers=0", "data.val_batch_size=1",
                               "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", *INFERENCE,
                               f"output_dir={tmp_path / 'eval'}"], config_name="eval")
    run_evaluation(eval_cfg)
    out = tmp_path / "predicted"
    summary = run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={root / 'images' / 'val'}",
                                         f"output={out}", *INFERENCE))
    assert summary["images"] == 3 and summary["inference"]["flip"] is True
    for i in range(3):
        mask = read_png(out / "masks" / f"img{i}.png")
        assert mask.shape == SIZES[i % 2]  # the input's size and name
        np.testing.assert_array_equal(mask, read_png(tmp_path / "eval" / "predictions" / f"img{i}.png"))
    assert yaml.safe_load((out / "classes.yaml").read_text()) == {"names": NAMES, "palette": PALETTE}


def test_overlay_blends_the_image_with_the_class_colours(folder_run, tmp_path: Path) -> None:
    root, ckpt = folder_run
    image = root / "images" / "val" / "img1.jpg"
    out = tmp_path / "predicted"
    run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={image}", f"output={out}", "overlay_alpha=0.25"))
    mask = read_png(out / "masks" / "img1.png")
    pixels = read_png(image).astype(np.float64)
    colours = colour_label(mask, [tuple(c) for c in PALETTE]).astype(np.float64)
    np.testing.assert_array_equal(read_png(out / "overlays" / "img1.png"), np.rint(0.75 * pixels + 0.25 * colours))
    assert sorted(p.name for p in out.rglob("*.png")) == ["img1.png", "img1.png"]  # one mask, one overlay
    assert overlay(np.full((1, 1, 3), 100, np.uint8), np.zeros((1, 1), np.uint8), [(200, 0, 50)], 0.5).tolist() == \
        [[[150, 50, 75]]]


def test_probabilities_are_the_softmax_whose_argmax_is_the_mask(folder_run, tmp_path: Path) -> None:
    root, ckpt = folder_run
    out = tmp_path / "predicted"
    run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={root / 'images' / 'val' / 'img*.jpg'}",
                               f"output={out}", "probabilities=true"))
    for i in range(3):
        probabilities = np.load(out / "probabilities" / f"img{i}.npy")
        assert probabilities.dtype == np.float32 and probabilities.shape == (3, *SIZES[i % 2])
        np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(probabilities.argmax(axis=0), read_png(out / "masks" / f"img{i}.png"))


def test_existing_files_are_never_replaced_unless_asked(folder_run, tmp_path: Path) -> None:
    root, ckpt = folder_run
    out = tmp_path / "predicted"
    image = root / "images" / "val" / "img0.jpg"
    run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={image}", f"output={out}"))
    (out / "masks" / "img0.png").write_bytes(b"mine")
    expected = f"output={out} already holds 2 of the files this run writes (masks/img0.png, overlays/img0.png)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={image}", f"output={out}"))
    assert (out / "masks" / "img0.png").read_bytes() == b"mine"
    other = root / "images" / "val" / "img1.jpg"  # a new image into the same folder: nothing to replace
    run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={other}", f"output={out}"))
    run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={image}", f"output={out}", "overwrite=true"))
    assert read_png(out / "masks" / "img0.png").shape == SIZES[0]


def test_input_is_an_image_a_folder_with_subfolders_or_a_glob(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.PNG", "sub/c.png", "notes.txt", ".hidden.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    folder = tmp_path / "in"
    assert input_images(str(folder)) == ([folder / "a.jpg", folder / "b.PNG", folder / "sub" / "c.png"],
                                         [Path("a"), Path("b"), Path("sub/c")])
    assert input_images(str(folder / "a.jpg")) == ([folder / "a.jpg"], [Path("a")])
    assert input_images(f"{folder}/**/*.png") == ([folder / "sub" / "c.png"], [Path("c")])
    (folder / "sub" / "a.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=re.escape(f"{folder / 'a.jpg'} and {folder / 'sub' / 'a.png'} would both "
                                                    "be written as 'a'")):
        input_images(f"{folder}/**/a.*")
    with pytest.raises(ConfigError, match=re.escape(f"input={folder}/*.gif: the pattern matches no image files")):
        input_images(f"{folder}/*.gif")
    with pytest.raises(ConfigError, match=re.escape(f"input={tmp_path / 'nowhere'}: no such file or folder")):
        input_images(str(tmp_path / "nowhere"))


def test_a_bad_input_image_is_named(folder_run, tmp_path: Path) -> None:
    _, ckpt = folder_run
    broken = tmp_path / "in" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image file {broken}")):
        run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={broken.parent}", f"output={tmp_path / 'o'}"))
    write_rgb(tmp_path / "in" / "broken.jpg", random_image(0, 40, 48))
    write_rgb(tmp_path / "in" / "wide.jpg", random_image(0, 40, 60))
    with pytest.raises(ConfigError, match=r"batch_size=2 needs images of one size, but .*broken.jpg is 48x40 and "
                                          r".*wide.jpg is 60x40 \(WxH\)"):
        run_prediction(predict_cfg(tmp_path, f"ckpt={ckpt}", f"input={broken.parent}", f"output={tmp_path / 'o'}",
                                   "batch_size=2"))


def test_the_gpu_is_chosen_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert prediction_trainer(OmegaConf.create({"accelerator": None, "precision": None})).accelerator == "gpu"
    assert prediction_trainer(OmegaConf.create({"accelerator": "cpu", "precision": None})).accelerator == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert prediction_trainer(OmegaConf.create({"accelerator": None, "precision": None})).accelerator is None


def test_each_missing_or_bad_key_is_named() -> None:
    cfg = compose_config(["input=x", "output=y", "output_dir=/tmp/unused"], config_name="predict")
    with pytest.raises(ConfigError, match=re.escape("ckpt=<...> is required: the segexp-train checkpoint")):
        require_keys(cfg)
    cfg.ckpt = "a.ckpt"
    cfg.overlay_alpha = 1.5
    with pytest.raises(ConfigError, match=re.escape("overlay_alpha must be a number in [0, 1], got 1.5")):
        require_keys(cfg)
    cfg.overlay_alpha, cfg.batch_size = 0.5, 0
    with pytest.raises(ConfigError, match=re.escape("batch_size must be a positive integer, got 0")):
        require_keys(cfg)


@pytest.mark.slow
def test_segexp_predict_command_writes_masks_with_a_progress_bar(folder_run, tmp_path: Path) -> None:
    root, ckpt = folder_run
    out = tmp_path / "predicted"
    done = subprocess.run([sys.executable, "-m", "segexp.cli.predict", f"ckpt={ckpt}", f"input={root}/images/val/*.jpg",
                           f"output={out}", "num_workers=0", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Predicting: 100%" in done.stdout and f"wrote the masks and overlays of 3 images to {out}" in done.stdout
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img0.png", "img1.png", "img2.png"]
