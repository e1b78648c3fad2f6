"""Hard-image bootstrapping (DeepLabv3 Sec. 4.3): exact epoch length and copies, cached class presence."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from segexp.data.bootstrapping import CACHE_FOLDER, class_presence, sample_repeats
from segexp.data.datamodule import SeededSampler, SegmentationDataModule
from segexp.data.datasets.synthetic import SyntheticShapes, generate_scene
from segexp.data.datasets.voc import VOC
from segexp.training.build import build_datamodule, validate
from tests.helpers.data_files import make_voc, voc_label

RING = SyntheticShapes.CLASSES.index("ring")


def epoch_counts(sampler: SeededSampler, epoch: int = 0) -> Counter[int]:
    sampler.set_epoch(epoch)
    return Counter(index for index, _ in sampler)


def test_sampler_draws_each_index_its_number_of_copies_with_distinct_seeds() -> None:
    repeats = [1, 3, 1, 2, 1, 1, 2]
    sampler = SeededSampler(len(repeats), seed=5, drop_last=True, repeats=repeats)
    assert len(sampler) == sum(repeats) == 11
    for epoch in (0, 1):
        assert epoch_counts(sampler, epoch) == Counter({i: r for i, r in enumerate(repeats)})
    sampler.set_epoch(0)
    seeds = [seed for index, seed in sampler if index == 1]
    assert len(set(seeds)) == 3  # each copy gets its own augmentation
    assert list(sampler) == list(SeededSampler(len(repeats), seed=5, drop_last=True, repeats=repeats))


def test_sampler_without_repeats_is_unchanged() -> None:
    plain, ones = SeededSampler(9, seed=3), SeededSampler(9, seed=3, repeats=[1] * 9)
    assert list(plain) == list(ones)


def synthetic_datamodule(**kwargs: object) -> SegmentationDataModule:
    dataset = partial(SyntheticShapes, num_images=16, image_size=32, seed=0)
    return SegmentationDataModule(dataset=dataset, crop_size=(32, 32), batch_size=2, num_workers=0, **kwargs)


def test_hard_images_of_synthetic_data_exact_epoch_length_and_counts() -> None:
    hard = [i for i in range(16) if RING in np.unique(generate_scene(0, "train", i, 32)[1])]
    assert 0 < len(hard) < 16
    datamodule = synthetic_datamodule(hard_classes=["ring"], hard_repeat=3)
    loader = datamodule.train_dataloader()
    assert len(loader.sampler) == 16 + 2 * len(hard)
    assert len(loader) == (16 + 2 * len(hard)) // 2
    counts = epoch_counts(loader.sampler)
    assert counts == Counter({i: 3 if i in hard else 1 for i in range(16)})
    batches = [int(i) for batch in loader for i in batch["index"]]
    assert Counter(batches) == counts  # the loader sees every copy


def test_unknown_hard_class_is_named_with_the_valid_classes() -> None:
    message = r"data.hard_classes: unknown class 'bicycle'; valid classes: background, disc"
    with pytest.raises(ValueError, match=message):
        synthetic_datamodule(hard_classes=["ring", "bicycle"])
    with pytest.raises(ValueError, match="data.hard_repeat must be >= 1"):
        synthetic_datamodule(hard_classes=["ring"], hard_repeat=0)


def test_hard_classes_from_the_command_line(make_cfg) -> None:
    cfg = make_cfg("data.hard_classes=[ring,disc]", "data.hard_repeat=2")
    validate(cfg)
    datamodule = build_datamodule(cfg)
    assert datamodule.hard_classes == ["ring", "disc"] and datamodule.hard_repeat == 2


def test_presence_is_cached_in_the_dataset_root_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_voc(tmp_path)
    dataset = VOC(root, split="train")
    expected = [sorted({0, 15, 1 + i % 20}) for i in range(len(dataset))]  # tests.fixtures.voc_label
    assert [np.unique(voc_label(i)[voc_label(i) != 255]).tolist() for i in range(3)] == expected
    assert class_presence(dataset) == expected
    cache_files = list((root / CACHE_FOLDER).glob("train_classes_*.json"))
    assert len(cache_files) == 1
    assert json.loads(cache_files[0].read_text())["present"] == expected

    def no_reading(path: object) -> None:
        raise AssertionError("labels were read again")

    monkeypatch.setattr("segexp.data.datasets.base.load_label", no_reading)
    monkeypatch.setattr("segexp.data.datasets.base.SegmentationDataset.load_sample", no_reading)
    assert class_presence(VOC(root, split="train")) == expected
    assert sample_repeats(expected, [2, 3], hard_repeat=2) == [1, 2, 2]  # bicycle in image 1, bird in image 2


def test_presence_cache_falls_back_to_the_run_dir(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "data")
    (root / CACHE_FOLDER).write_text("a file where the cache folder should be: the root is not writable")
    run_dir = tmp_path / "run"
    presence = class_presence(VOC(root, split="train"), fallback_dir=run_dir)
    assert len(presence) == 3
    assert len(list(run_dir.glob("train_classes_*.json"))) == 1


def test_mid_epoch_resume_with_hard_images_continues_the_same_order() -> None:
    def epoch_batches(skip_batches: int) -> list[list[int]]:
        loader = synthetic_datamodule(hard_classes=["ring"], hard_repeat=2).train_dataloader()
        loader.load_state_dict({"epoch": 1, "batches": skip_batches})
        return [batch["index"].tolist() for batch in loader]

    full = epoch_batches(0)
    assert epoch_batches(3) == full[3:]
