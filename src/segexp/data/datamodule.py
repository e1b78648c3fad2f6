"""Lightning data module: dataset splits, albumentations pipelines and resumable loaders.

Training order and augmentation are pure functions of ``(seed, epoch)``: :class:`SeededSampler`
yields ``(index, sample_seed)`` pairs that the dataset uses to seed its albumentations pipeline,
and :class:`ResumableDataLoader` records how many batches of the current epoch were consumed, so a
run resumed from a mid-epoch checkpoint sees exactly the batches the uninterrupted run would have.
The sampler also shards by DDP rank itself (the trainer runs with ``use_distributed_sampler=False``):
rank ``r`` of ``R`` takes every ``R``-th entry of the epoch order, so the per-device batches ``k`` of all
ranks together are exactly batch ``k`` of one process with an ``R`` times larger batch (DeepLabv3 Table 11).
Hard-image bootstrapping (DeepLabv3 Sec. 4.3, :mod:`segexp.data.bootstrapping`) repeats the images containing
``hard_classes`` ``hard_repeat`` times in every epoch; the repeated index list is a pure function of the
labels, so resume stays exact.

Validation and test use :class:`EvalSampler` instead: rank ``r`` of ``R`` scores images ``r, r + R, ...`` of
the split and nothing else, so every image enters the confusion matrix (summed over the ranks) exactly once on any
number of devices (ranks may score different counts; nothing is padded). ``data.val_limit`` keeps only the first
images of the split, before the sharding: the same images are scored whatever the process count (a per-rank
``trainer.limit_val_batches`` scores more images on more processes).
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing.util  # noqa: F401  (its exit handler is registered before ours, so ours runs first)
import signal
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler

from segexp.data.bootstrapping import class_presence, hard_class_ids, sample_repeats
from segexp.data.datasets.base import IGNORE_INDEX, SegmentationDataset
from segexp.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
    normalize_on_device,
)

log = logging.getLogger(__name__)

_LOADERS_WITH_WORKERS: weakref.WeakSet[DataLoader] = weakref.WeakSet()
"""The worker-backed loaders this module made that may still be alive (see :func:`stop_persistent_workers`)."""


class SeededSampler(Sampler[tuple[int, int]]):
    """Shuffled, rank-sharded ``(index, augmentation seed)`` pairs, fixed by ``(seed, epoch)``.

    An epoch draws index ``i`` of ``range(size)`` ``repeats[i]`` times (default once each); every copy is a
    separate entry of the shuffled order with its own augmentation seed. ``num_replicas`` / ``rank``
    default to the initialised process group's (1 / 0 without one).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        repeats: Sequence[int] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0
        self.entries = _expand(size, repeats)
        world_size, world_rank = _world()
        self.num_replicas = world_size if num_replicas is None else num_replicas
        self.rank = world_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"SeededSampler: rank {self.rank} is not in [0, num_replicas={self.num_replicas})")

    @property
    def num_entries(self) -> int:
        """Entries of one epoch over all ranks before padding/dropping: ``sum(repeats)``."""
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, num_samples: int) -> None:
        """Leave out the first ``num_samples`` of the next iteration only (mid-epoch resume)."""
        self._skip = num_samples

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_entries // self.num_replicas
        return math.ceil(self.num_entries / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        count = self.num_entries
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        sample_seeds = torch.randint(0, 2**31 - 1, (count,), generator=generator)
        total = len(self) * self.num_replicas
        order = torch.cat([order, order[: total - count]]) if total > count else order[:total]
        mine = order[self.rank :: self.num_replicas].tolist()[self._skip :]
        self._skip = 0
        return iter([(self.entries[j], int(sample_seeds[j])) for j in mine])


def _expand(size: int, repeats: Sequence[int] | None) -> list[int]:
    """``range(size)`` with index ``i`` repeated ``repeats[i]`` times (in index order)."""
    if repeats is None:
        return list(range(size))
    if len(repeats) != size or any(int(r) < 0 for r in repeats):
        raise ValueError(f"SeededSampler: repeats must be {size} non-negative counts, got {len(repeats)} values")
    return [index for index, copies in enumerate(repeats) for _ in range(int(copies))]


class EvalSampler(DistributedSampler):
    """Rank ``rank`` of ``num_replicas``'s share of the evaluated images ``range(size)``: ``rank, rank +
    num_replicas, ...``, in order, unpadded.

    Over all ranks every index comes exactly once, so the confusion matrix summed across ranks is the one
    process's (5 images on 2 ranks: 0, 2, 4 and 1, 3). :class:`SeededSampler` and torch's
    ``DistributedSampler`` instead pad the last round with the first indices, which would score those images
    twice. A ``DistributedSampler`` subclass only so that Lightning never wraps it in its own padding one
    (``trainer.use_distributed_sampler=true`` keeps a sampler of that class); its ``num_samples`` is this
    rank's count and ``total_size`` the ``size`` images of all ranks together. ``num_replicas`` / ``rank``
    default to the initialised process group's (1 / 0 without one).
    """

    def __init__(self, size: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        world_size, world_rank = _world()
        num_replicas = world_size if num_replicas is None else num_replicas
        rank = world_rank if rank is None else rank
        if size < 0 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"EvalSampler: need size >= 0 and rank in [0, num_replicas), got size={size}, "
                             f"rank={rank}, num_replicas={num_replicas}")
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.size = size
        self.num_samples = len(self.indices())
        self.total_size = size

    def indices(self) -> range:
        return range(self.rank, self.size, self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())


def images_to_score(split_size: int, limit: int | None) -> int:
    """The first ``limit`` images of a split of ``split_size`` (all of them with ``limit=None`` or a larger one)."""
    return split_size if limit is None else min(split_size, limit)


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
        prefetch_factor: int = 2,
        seed: int = 0,
        hard_classes: list[str] | None = None,
        hard_repeat: int = 2,
        normalize_on_device: bool | None = None,
        val_limit: int | None = None,
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
        self.prefetch_factor = prefetch_factor
        self.seed = seed
        self.hard_classes = list(hard_classes) if hard_classes else None
        self.hard_repeat = hard_repeat
        if val_limit is not None and val_limit < 1:
            raise ValueError(f"data.val_limit must be >= 1 (the first images of the val/test split to score) or null "
                             f"(all of them), got {val_limit}")
        self.val_limit = val_limit
        if hard_repeat < 1:
            raise ValueError(f"data.hard_repeat must be >= 1 (copies of each hard image in total), got {hard_repeat}")
        if self.hard_classes is not None:
            hard_class_ids(self.hard_classes, self.class_names)  # fail on unknown names before any data is read
        # None: on where CUDA is (batches cross to the GPU as uint8, a quarter of the float32 bytes)
        self.normalize_on_device = torch.cuda.is_available() if normalize_on_device is None else normalize_on_device
        if self.normalize_on_device and self.num_classes > IGNORE_INDEX:
            raise ValueError(f"data.normalize_on_device=true moves labels as uint8, but {self.dataset_class.__name__}"
                             f" has {self.num_classes} classes (at most {IGNORE_INDEX} fit beside the ignore value)")
        self.datasets: dict[tuple[str, bool], SegmentationDataset] = {}
        self._train_repeats: list[int] | None = None

    @property
    def dataset_class(self) -> type[SegmentationDataset]:
        """The dataset's class as configured (:meth:`SegmentationDataset.configured`: for ``dataset=folder``, the
        class holding the classes of its settings)."""
        target = getattr(self.dataset_factory, "func", self.dataset_factory)
        if isinstance(target, type) and issubclass(target, SegmentationDataset):
            return target.configured(**getattr(self.dataset_factory, "keywords", {}))
        return target

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
            normalize = not self.normalize_on_device
            if train:
                transform = build_train_transform(
                    self.crop_size, self.scale_range, self.scale_step, self.hflip, self.mean, self.std, normalize
                )
            else:
                transform = build_eval_transform(self.mean, self.std, normalize)
            self.datasets[split, train] = self.dataset_factory(split=split, transform=transform)
        return self.datasets[split, train]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.split_dataset(self.train_split, train=True)
            self.train_repeats()  # hard-image bootstrapping reads every training label here, once
        if stage in (None, "fit", "validate"):
            self.split_dataset(self.val_split, train=False)
        if stage in (None, "test"):
            self.split_dataset(self.test_split or self.val_split, train=False)

    def train_repeats(self) -> list[int] | None:
        """Copies per epoch of each training image under hard-image bootstrapping (None: once each).

        The class presence of every training label is read once (then cached, see
        :mod:`segexp.data.bootstrapping`); the cache goes beside the data, else into the trainer's run dir.
        """
        if self.hard_classes is None:
            return None
        if self._train_repeats is None:
            dataset = self.split_dataset(self.train_split, train=True)
            fallback = Path(self.trainer.default_root_dir) if self.trainer is not None else None
            presence = class_presence(dataset, fallback)
            hard_ids = hard_class_ids(self.hard_classes, self.class_names)
            self._train_repeats = sample_repeats(presence, hard_ids, self.hard_repeat)
            hard = sum(r > 1 for r in self._train_repeats)
            log.info(
                "hard-image bootstrapping: %d of %d '%s' images contain one of %s and are drawn %dx per epoch "
                "(%d samples per epoch)", hard, len(dataset), self.train_split, ", ".join(self.hard_classes),
                self.hard_repeat, sum(self._train_repeats),
            )
        return self._train_repeats

    def train_sampler(self) -> SeededSampler:
        dataset = self.split_dataset(self.train_split, train=True)
        return SeededSampler(len(dataset), self.seed, shuffle=True, drop_last=True, repeats=self.train_repeats())

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset(self.train_split, train=True)
        sampler = self.train_sampler()
        if sampler.num_entries < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {sampler.num_entries} samples per epoch "
                f"of split '{self.train_split}'"
            )
        return tracked(ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            progress=self._batches_done,
            **self._loader_kwargs(),
        ))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split or self.val_split)

    def eval_sampler(self, split: str, num_replicas: int | None = None, rank: int | None = None) -> EvalSampler:
        """This rank's share of the images of ``split`` that are scored: the first ``data.val_limit`` (all without
        one), cut before sharding so that the same images are scored on any number of processes, each once.
        ``num_replicas`` / ``rank`` default to the process group's."""
        split_size = len(self.split_dataset(split, train=False))
        size = images_to_score(split_size, self.val_limit)
        sampler = EvalSampler(size, num_replicas, rank)
        if size < sampler.num_replicas:
            limit = f" (data.val_limit={self.val_limit})" if size < split_size else ""
            raise ValueError(
                f"split '{split}': {size} image(s) to score{limit} on {sampler.num_replicas} processes; each process "
                "needs at least one (one without images would hang the other ranks' metric sync): use fewer devices "
                "or more images"
            )
        return sampler

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.split_dataset(split, train=False)
        sampler = self.eval_sampler(split)
        return tracked(DataLoader(dataset, batch_size=self.val_batch_size, sampler=sampler, **self._loader_kwargs()))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``normalize_on_device``: the uint8 images and labels that crossed to the device become the
        normalised float32 images and long labels every consumer expects (Lightning calls this hook)."""
        if self.normalize_on_device and isinstance(batch, dict) and batch["image"].dtype == torch.uint8:
            batch = {**batch, "image": normalize_on_device(batch["image"], self.mean, self.std),
                     "label": batch["label"].long()}
        return batch

    def _loader_kwargs(self) -> dict[str, Any]:
        """Workers stay alive across epochs and prefetch ``prefetch_factor`` batches each; batches go to
        page-locked memory when CUDA is present (faster, asynchronous host-to-device copies), and travel as
        uint8 with ``normalize_on_device``."""
        workers = {"persistent_workers": True, "prefetch_factor": self.prefetch_factor} if self.num_workers else {}
        return {
            "num_workers": self.num_workers,
            "pin_memory": torch.cuda.is_available(),
            "collate_fn": collate_uint8_labels if self.normalize_on_device else None,
            **workers,
            # A private generator keeps loader start-up from consuming the global torch RNG.
            "generator": torch.Generator().manual_seed(self.seed),
            "worker_init_fn": single_threaded_worker,
        }

    def _batches_done(self) -> int:
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready


def single_threaded_worker(worker_id: int) -> None:
    """Keep OpenCV in loader workers to one thread: N workers x all-core OpenCV pools oversubscribe
    the CPU that the training step needs (augmentation randomness comes from the sampler's seeds).

    Workers also ignore the pre-emption signals (SIGTERM, SIGUSR1): a scheduler signals every process of the
    job, and a worker killed by it would fail the very step during which the main process saves its state.
    The main process stops them when it exits (and they exit by themselves if it dies)."""
    cv2.setNumThreads(1)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def collate_uint8_labels(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The default batch, with labels as uint8 (class ids < 255 and the ignore value 255 fit; the datasets
    reject any other value): with uint8 images, a batch is a fifth of the float32 + int64 bytes."""
    batch = default_collate(samples)
    batch["label"] = batch["label"].to(torch.uint8)
    return batch


def tracked(loader: DataLoader) -> DataLoader:
    """``loader``, remembered (weakly) so that its persistent workers are stopped at interpreter exit."""
    if loader.num_workers:
        _LOADERS_WITH_WORKERS.add(loader)
    return loader


def stop_persistent_workers() -> None:
    """Stop the workers of loaders still alive when the interpreter exits (a script that iterated
    ``datamodule.train_dataloader()`` itself; Lightning stops them at the end of fit and validate).

    The workers ignore SIGTERM (:func:`single_threaded_worker`), and multiprocessing's exit handler stops
    daemonic children with SIGTERM and then joins them, so without this the exit would wait forever. Registered
    after that handler, this runs before it (atexit is last in, first out). ``_shutdown_workers`` is the
    iterator's own orderly stop (end-of-work messages, then join), the call Lightning makes."""
    for loader in list(_LOADERS_WITH_WORKERS):
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


atexit.register(stop_persistent_workers)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0

