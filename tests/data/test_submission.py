"""Evaluation-server PNGs (DeepLabv3 Tables 7 and 13): VOC palette PNGs, Cityscapes labelId PNGs."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.cli.evaluate import hydra_result, run_evaluation
from segexp.cli.train import run_training
from segexp.config import ConfigError, compose_config
from segexp.data.datasets.base import IGNORE_INDEX, load_label
from segexp.data.datasets.cityscapes import Cityscapes
from segexp.data.datasets.voc import VOC, VOC_PALETTE
from segexp.data.submission import TRAIN_ID_TO_LABEL_ID, palette_png, submission_name
from segexp.training.metrics import confusion_matrix_metric, metrics_from_confusion
from segexp.training.prediction_pngs import SavePredictions
from tests.helpers.data_files import HEIGHT, WIDTH, make_cityscapes, make_voc, random_image, write_rgb

OFFICIAL_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
"""cityscapesScripts labels.py: the labelId of trainIds 0..18 (road ... bicycle)."""


def scores_for(prediction: np.ndarray, num_classes: int, pad: int = 0) -> torch.Tensor:
    """One-hot ``(1, C, H + pad, W + pad)`` scores whose argmax is ``prediction`` (padding predicts 0)."""
    padded = np.pad(prediction, ((0, pad), (0, pad)))
    return torch.nn.functional.one_hot(torch.from_numpy(padded).long(), num_classes).permute(2, 0, 1)[None].float()


def known_prediction(num_classes: int) -> np.ndarray:
    return (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % num_classes).astype(np.uint8)


def test_train_ids_map_back_to_official_label_ids() -> None:
    assert TRAIN_ID_TO_LABEL_ID[:19].tolist() == OFFICIAL_LABEL_IDS


def test_voc_prediction_becomes_a_palette_png_named_after_the_image(tmp_path: Path) -> None:
    dataset = VOC(make_voc(tmp_path), split="val")
    prediction = known_prediction(21)
    saver = SavePredictions(tmp_path / "predictions")
    batch = {"index": torch.tensor([1]), "label": torch.zeros(1, HEIGHT, WIDTH, dtype=torch.long)}
    saver.save_batch(dataset, scores_for(prediction, 21, pad=3), batch)

    written = tmp_path / "predictions" / "2008_000011.png"  # VOC_VAL[1]: <image id>.png
    with Image.open(written) as png:
        assert png.mode == "P" and png.size == (WIDTH, HEIGHT)  # the label's resolution, padding cropped
        assert np.array_equal(np.asarray(png), prediction)
        palette = png.getpalette()[: 21 * 3]
    assert [tuple(palette[i : i + 3]) for i in range(0, 63, 3)] == list(VOC_PALETTE)
    assert VOC_PALETTE[15] == (192, 128, 128)  # person in the standard VOC colour map
    assert saver.written == 1


def test_cityscapes_prediction_becomes_a_label_id_png(tmp_path: Path) -> None:
    dataset = Cityscapes(make_cityscapes(tmp_path), split="val")
    prediction = known_prediction(19)
    SavePredictions(tmp_path / "out").save_batch(
        dataset, scores_for(prediction, 19), {"index": torch.tensor([0]), "label": torch.zeros(1, HEIGHT, WIDTH)}
    )
    written = tmp_path / "out" / "aachen_000000_000019_leftImg8bit.png"  # the server's name: the image's
    with Image.open(written) as png:
        assert png.mode == "L"
        assert np.array_equal(np.asarray(png), np.asarray(OFFICIAL_LABEL_IDS)[prediction])


def test_submission_names() -> None:
    path = "/data/cityscapes/leftImg8bit/test/berlin/berlin_000123_000019_leftImg8bit.png"
    assert submission_name(path, 0) == "berlin_000123_000019_leftImg8bit.png"
    assert submission_name("/VOC2012/JPEGImages/2008_000011.jpg", 0) == "2008_000011.png"
    assert submission_name(None, 7) == "000007.png"


def test_predictions_must_be_class_maps() -> None:
    with pytest.raises(ValueError, match=r"class indices in \[0, 21\)"):
        palette_png(np.full((2, 2), 21), VOC_PALETTE)


VOC_TEST = ["2009_000020", "2009_000021"]
VOC_TRAIN_RUN = ["backbone=resnet18", "head=fcn", "dataset=voc", "logger=csv", "data.num_workers=0",
                 "data.crop_size=[24,32]", "data.batch_size=2", "trainer.max_steps=1", "trainer.val_check_interval=1",
                 "trainer.enable_progress_bar=false", "backbone.output_stride=8"]


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(VOC2012 root, checkpoint)``: a VOC fixture tree with an unlabelled test split and a 1-step resnet18
    checkpoint trained on it (21 VOC classes)."""
    tmp = tmp_path_factory.mktemp("voc_run")
    root = make_voc(tmp)
    add_voc_test_split(root, VOC_TEST)
    run_training(compose_config([*VOC_TRAIN_RUN, f"dataset.root={root}", f"output_dir={tmp / 'train'}"]))
    return root, tmp / "train" / "checkpoints" / "last.ckpt"


def strict_json(path: Path) -> dict:
    """The JSON object in ``path``; fails on NaN / Infinity tokens, which JSON does not have."""

    def reject(token: str) -> None:
        raise ValueError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_segexp_eval_save_predictions_writes_server_pngs_that_reproduce_the_metrics(voc_run, make_cfg) -> None:
    root, ckpt = voc_run
    eval_cfg = make_cfg(f"ckpt={ckpt}", "save_predictions=true", base=["data.num_workers=0"], config_name="eval")
    metrics = run_evaluation(eval_cfg)

    out = Path(eval_cfg.output_dir) / "predictions"
    saved = strict_json(Path(eval_cfg.output_dir) / "metrics.json")
    assert saved["predictions_dir"] == str(out) and saved["num_predictions"] == 2 and saved["labelled"] is True
    assert sorted(p.name for p in out.iterdir()) == ["2007_000010.png", "2008_000011.png"]
    confusion = confusion_matrix_metric(21)
    for name in ("2007_000010", "2008_000011"):
        with Image.open(out / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (WIDTH, HEIGHT)
            predicted = torch.from_numpy(np.asarray(png).astype(np.int64))
        label = torch.from_numpy(load_label(root / "SegmentationClass" / f"{name}.png").astype(np.int64))
        confusion.update(predicted[None], label[None])
    recomputed = metrics_from_confusion(confusion.compute(), VOC.CLASSES)
    assert recomputed["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-9)
    assert saved["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-12) and 0.0 <= saved["mIoU"] <= 1.0
    assert hydra_result(metrics) == pytest.approx(metrics["mIoU"])


def test_eval_of_a_split_without_labels_writes_predictions_and_no_scores(voc_run, make_cfg, capsys) -> None:
    _, ckpt = voc_run
    cfg = make_cfg(f"ckpt={ckpt}", "save_predictions=true", "data.val_split=test", base=["data.num_workers=0"],
                   config_name="eval")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_evaluation(cfg)
    assert [str(w.message) for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))] == []

    out = Path(cfg.output_dir) / "predictions"
    assert sorted(p.name for p in out.iterdir()) == ["2009_000020.png", "2009_000021.png"]
    with Image.open(out / "2009_000020.png") as png:
        assert png.mode == "P" and png.size == (WIDTH + 4, HEIGHT)
    saved = strict_json(Path(cfg.output_dir) / "metrics.json")
    for payload in (saved, metrics):
        assert payload["labelled"] is False
        assert (payload["mIoU"], payload["pixel_acc"], payload["mean_acc"]) == (None, None, None)
        assert payload["per_class_iou"] == dict.fromkeys(VOC.CLASSES) and len(payload["per_class_iou"]) == 21
        assert payload["predictions_dir"] == str(out) and payload["num_predictions"] == 2
    assert saved["ckpt"] == str(ckpt.resolve()) and saved["steps"] == 1
    printed = capsys.readouterr().out
    assert "split 'test' has no labels: no scores computed" in printed
    assert f"submit the 2 predictions in {out} to the evaluation server" in printed
    assert math.isnan(hydra_result(metrics))


def test_eval_of_a_split_without_labels_needs_save_predictions(voc_run, make_cfg) -> None:
    _, ckpt = voc_run
    cfg = make_cfg(f"ckpt={ckpt}", "data.val_split=test", base=["data.num_workers=0"], config_name="eval")
    expected = r"^data\.val_split=test: the split has no labels .* pass save_predictions=true"
    with pytest.raises(ConfigError, match=expected):
        run_evaluation(cfg)
    # failed before any work: the run folder holds only the reason (no model, no trainer, no metrics)
    assert [p.name for p in Path(cfg.output_dir).iterdir()] == ["error.json"]
    assert "data.val_split=test" in json.loads((Path(cfg.output_dir) / "error.json").read_text())["error"]


def test_all_ignore_confusion_gives_nan_scores_and_null_class_ious() -> None:
    """What the module computes on a split without labels: nothing is counted, so no score is defined."""
    confusion = confusion_matrix_metric(3)
    confusion.update(torch.tensor([[0, 1, 2]]), torch.full((1, 3), IGNORE_INDEX))
    assert int(confusion.compute().sum()) == 0
    metrics = metrics_from_confusion(confusion.compute(), ("a", "b", "c"))
    assert all(math.isnan(metrics[key]) for key in ("mIoU", "pixel_acc", "mean_acc"))
    assert metrics["per_class_iou"] == {"a": None, "b": None, "c": None}


def add_voc_test_split(root: Path, names: list[str]) -> None:
    """VOC2012test.tar's content: test.txt and JPEG images, no labels (here 4 px wider than the others)."""
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("".join(f"{n}\n" for n in names))
    for i, name in enumerate(names):
        write_rgb(root / "JPEGImages" / f"{name}.jpg", random_image(50 + i, HEIGHT, WIDTH + 4))


def test_voc_test_split_has_images_without_labels(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    add_voc_test_split(root, ["2009_000020", "2009_000021"])
    dataset = VOC(root, split="test")
    assert [label for _, label in dataset.samples] == [None, None]
    assert not dataset.has_labels and VOC(root, split="val").has_labels
    sample = dataset[1]
    assert tuple(sample["image"].shape) == (3, HEIGHT, WIDTH + 4)
    assert sample["label"].shape == (HEIGHT, WIDTH + 4) and bool((sample["label"] == 255).all())
