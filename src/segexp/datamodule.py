"""Lightning data module: dataset splits, albumentations pipelines and resumable loaders.

Training order and augmentation are pure functions of ``(seed, epoch)``: :class:`SeededSampler`
yields ``(index, sample_seed)`` pairs that the dataset uses to seed its albumentations pipeline,
and :class:`ResumableDataLoader` records how many batches of the current epoch were consumed, so a
run resumed from a mid-epoch checkpoint sees exactly the batches the uninterrupted run would have.
The sampler also shards by DDP rank itself (the trainer runs with ``use_distributed_sampler=False``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from segexp.datasets.base import SegmentationDataset
from segexp.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
)


class SeededSampler(Sampler[tuple[int, int]]):
    """Shuffled, rank-sharded ``(index, augmentation seed)`` pairs, fixed by ``(seed, epoch)``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, drop_last: bool = False) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0
        self.num_replicas, self.rank = _world()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, num_samples: int) -> None:
        """Leave out the first ``num_samples`` of the next iteration only (mid-epoch resume)."""
        self._skip = num_samples

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.num_replicas
        return math.ceil(self.size / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        sample_seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator)
        total = len(self) * self.num_replicas
        order = torch.cat([order, order[: total - self.size]]) if total > self.size else order[:total]
        mine = order[self.rank :: self.num_replicas].tolist()[self._skip :]
        self._skip = 0
        return iter([(i, int(sample_seeds[i])) for i in mine])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints."""

    def __init__(self, *args: Any, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": int(self._progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = state["epoch"], state["batches"]
        if batches >= len(self):  # saved at the end of an epoch: the next one starts fresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip_next(batches * self.batch_size)


class SegmentationDataModule(pl.LightningDataModule):
    """Train/val/test splits of one dataset with the paper's augmentation pipeline."""

    def __init__(
        self,
        dataset: Callable[..., SegmentationDataset],
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        crop_size: tuple[int, int] = (512, 512),
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float = 0.25,
        hflip: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dataset_factory = dataset
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.scale_step = scale_step
        self.hflip = hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[tuple[str, bool], SegmentationDataset] = {}

    @property
    def dataset_class(self) -> type[SegmentationDataset]:
        return getattr(self.dataset_factory, "func", self.dataset_factory)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.dataset_class.CLASSES)

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(self.dataset_class.PALETTE)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_dataset(self, split: str, train: bool) -> SegmentationDataset:
        """The dataset of one split with the train or eval pipeline (built once, then cached)."""
        if (split, train) not in self.datasets:
            if train:
                transform = build_train_transform(
                    self.crop_size, self.scale_range, self.scale_step, self.hflip, self.mean, self.std
                )
            else:
                transform = build_eval_transform(self.mean, self.std)
            self.datasets[split, train] = self.dataset_factory(split=split, transform=transform)
        return self.datasets[split, train]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.split_dataset(self.train_split, train=True)
        if stage in (None, "fit", "validate"):
            self.split_dataset(self.val_split, train=False)
        if stage in (None, "test"):
            self.split_dataset(self.test_split or self.val_split, train=False)

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset(self.train_split, train=True)
        if len(dataset) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {len(dataset)} images of split "
                f"'{self.train_split}'"
            )
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=SeededSampler(len(dataset), self.seed, shuffle=True, drop_last=True),
            drop_last=True,
            progress=self._batches_done,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split or self.val_split)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.split_dataset(split, train=False)
        sampler = SeededSampler(len(dataset), self.seed, shuffle=False)
        return DataLoader(dataset, batch_size=self.val_batch_size, sampler=sampler, **self._loader_kwargs())

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
            # A private generator keeps loader start-up from consuming the global torch RNG.
            "generator": torch.Generator().manual_seed(self.seed),
        }

    def _batches_done(self) -> int:
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0

