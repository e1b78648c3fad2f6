"""Every val image is scored exactly once on any number of processes (issue 23, defect 6).

The eval sampler gives rank ``r`` of ``R`` the images ``r, r + R, ...`` unpadded, so the per-rank confusion
matrices sum to the one-process matrix; ``data.val_limit`` cuts the split before the sharding, so the proxy
profile scores the same images on one and on two processes. The end-to-end check through Lightning (validation
while training under DDP and ``segexp-eval`` on two gloo processes) is in ``tests/end_to_end/test_ddp_eval.py`` (slow).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf
from torch.utils.data.distributed import DistributedSampler

import segexp.data.datamodule as datamodule_module
from segexp.cli.evaluate import run_config
from segexp.config import compose_config
from segexp.data.datamodule import EvalSampler, SegmentationDataModule
from segexp.tables.plan import merge_overrides
from segexp.tables.spec import load_profile
from segexp.training.build import build_datamodule
from segexp.training.metrics import confusion_matrix_metric

ODD_SPLIT = ["dataset=synthetic", "dataset.num_images=5", "dataset.image_size=32", "data.num_workers=0",
             "data.val_batch_size=2"]
"""Five val images: two ranks score 3 and 2 (the old padded sharding scored 3 and 3, image 0 twice)."""


@pytest.mark.parametrize("size", range(1, 10))
@pytest.mark.parametrize("world", range(1, 5))
def test_eval_shards_are_disjoint_and_cover_every_index_once(size: int, world: int) -> None:
    shards = [list(EvalSampler(size, num_replicas=world, rank=rank)) for rank in range(world)]
    assert Counter(i for shard in shards for i in shard) == Counter(range(size))  # each index exactly once
    assert [len(EvalSampler(size, num_replicas=world, rank=rank)) for rank in range(world)] == list(map(len, shards))
    assert shards[0] == list(range(0, size, world))  # strided: rank r takes r, r + R, ... (as the train sampler)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_eval_sampler_names_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match=r"rank=2, num_replicas=2"):
        EvalSampler(5, num_replicas=2, rank=2)


def loader_indices(datamodule: SegmentationDataModule, world: int, rank: int,
                   monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The image indices of ``datamodule.val_dataloader()`` on ``rank`` of a ``world``-process group."""
    monkeypatch.setattr(datamodule_module, "_world", lambda: (world, rank))
    return [int(i) for batch in datamodule.val_dataloader() for i in batch["index"]]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_val_loaders_of_all_ranks_read_each_image_once(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = build_datamodule(compose_config(ODD_SPLIT))
    scored = [i for rank in range(world) for i in loader_indices(datamodule, world, rank, monkeypatch)]
    assert sorted(scored) == [0, 1, 2, 3, 4]


def test_val_limit_keeps_the_first_images_on_any_number_of_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = build_datamodule(compose_config([*ODD_SPLIT, "data.val_limit=3"]))
    for world in (1, 2, 3):
        scored = [i for rank in range(world) for i in loader_indices(datamodule, world, rank, monkeypatch)]
        assert sorted(scored) == [0, 1, 2]
    everything = build_datamodule(compose_config([*ODD_SPLIT, "data.val_limit=50"]))  # more than the split: all
    assert sorted(loader_indices(everything, 1, 0, monkeypatch)) == [0, 1, 2, 3, 4]


def test_lightning_keeps_the_eval_sampler() -> None:
    """Lightning replaces a loader's sampler by its padding DistributedSampler only where
    ``use_distributed_sampler`` is on and the sampler is no DistributedSampler: both configs turn it off, and the
    eval sampler is one anyway (``trainer.use_distributed_sampler=true`` keeps it too)."""
    for name in ("train", "eval"):
        overrides = ["ckpt=unused.ckpt"] if name == "eval" else []
        assert compose_config(overrides, name).trainer.use_distributed_sampler is False
    sampler = build_datamodule(compose_config(ODD_SPLIT)).val_dataloader().sampler
    assert isinstance(sampler, DistributedSampler) and (sampler.num_samples, sampler.total_size) == (5, 5)


def test_a_process_without_images_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = build_datamodule(compose_config([*ODD_SPLIT, "data.val_limit=1"]))
    with pytest.raises(ValueError, match=r"split 'val': 1 image\(s\) to score \(data.val_limit=1\) on 2 processes"):
        loader_indices(datamodule, 2, 0, monkeypatch)
    with pytest.raises(ValueError, match=r"data.val_limit must be >= 1.*got 0"):
        build_datamodule(compose_config([*ODD_SPLIT, "data.val_limit=0"]))


# ------------------------------------------------------------------ confusion matrix over two gloo processes


def image_confusion(datamodule: SegmentationDataModule) -> tuple[torch.Tensor, int]:
    """The confusion matrix and image count of this process's val loader, synced over the process group
    (torchmetrics sums the ranks' states at ``compute``). Each image's 'prediction' is its label shifted by the
    image index, so every image adds its own counts and an image scored twice changes the matrix."""
    confusion = confusion_matrix_metric(datamodule.num_classes)
    images = 0
    for batch in datamodule.val_dataloader():
        labels = batch["label"]
        shift = batch["index"].view(-1, 1, 1)
        confusion.update(torch.where(labels == 255, labels, (labels + shift) % datamodule.num_classes), labels)
        images += labels.shape[0]
    count = torch.tensor([images])
    if dist.is_initialized():
        dist.all_reduce(count)
    return confusion.compute(), int(count)


def rank_confusion(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: its shard's confusion matrix, summed over the ranks; rank 0 saves it."""
    torch.set_num_threads(1)  # one thread in a forked child: the parent's OpenMP pool does not survive a fork
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        matrix, images = image_confusion(build_datamodule(compose_config(ODD_SPLIT)))
        if rank == 0:
            torch.save({"matrix": matrix, "images": images}, Path(out_dir) / "synced.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_sum_to_the_one_process_confusion_matrix(tmp_path: Path) -> None:
    # forked, not spawned: a spawned child spends ~10 s importing segexp again on a busy 2-core machine
    mp.start_processes(rank_confusion, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    synced = torch.load(tmp_path / "synced.pt", weights_only=True)
    single, images = image_confusion(build_datamodule(compose_config(ODD_SPLIT)))
    assert images == synced["images"] == 5  # 3 + 2, not 3 + 3
    assert torch.equal(synced["matrix"], single)


# ------------------------------------------------------------------ the proxy profile's validation images


def lightning_batches(limit: int | float | None, num_batches: int) -> int:
    """Batches Lightning runs on one process under ``trainer.limit_val_batches`` (a count or a fraction)."""
    if limit is None:
        return num_batches
    if isinstance(limit, int):
        return min(limit, num_batches)
    return int(num_batches * limit)


def scored_images(cfg: DictConfig, world: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The val images a run of ``cfg`` on ``world`` processes scores: each rank's loader, cut per rank by
    ``trainer.limit_val_batches`` as Lightning does."""
    datamodule = build_datamodule(cfg)
    limit = cfg.trainer.get("limit_val_batches")
    scored = []
    for rank in range(world):
        monkeypatch.setattr(datamodule_module, "_world", lambda rank=rank: (world, rank))
        batches = [batch["index"].tolist() for batch in datamodule.val_dataloader()]
        scored += [i for batch in batches[: lightning_batches(limit, len(batches))] for i in batch]
    return sorted(scored)


SYNTHETIC_SPLIT = ["dataset=synthetic", "dataset.num_images=40", "dataset.image_size=32", "data.num_workers=0"]
"""In place of CamVid (no files needed): 40 val images, more than the profile scores on any process count."""


def eval_config(profile_overrides: list[str], trainer: list[str]) -> DictConfig:
    """The config segexp-eval builds its data module from for an eval-only row: the checkpoint's training config
    (here a synthetic one) with the eval command's data keys (the profile's ``eval_overrides``) applied."""
    cfg = compose_config(merge_overrides(["ckpt=unused.ckpt"], trainer, SYNTHETIC_SPLIT, profile_overrides), "eval")
    stored = OmegaConf.to_container(compose_config(SYNTHETIC_SPLIT), resolve=True)
    return run_config(cfg, stored)


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_proxy_profile_scores_the_same_images_on_one_and_two_processes(kind: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile("proxy")
    assert profile.distributed is not None and profile.distributed.max_processes == 2
    if kind == "train":
        one = compose_config(merge_overrides(profile.overrides, SYNTHETIC_SPLIT))
        two = compose_config(merge_overrides(profile.overrides, profile.distributed.overrides, SYNTHETIC_SPLIT))
    else:
        one = eval_config(list(profile.eval_overrides), [])
        two = eval_config(list(profile.eval_overrides), ["trainer=ddp_cpu"])
    assert int(two.trainer.devices) == 2
    # "validation on the first 16 val images" (the profile's description), on one process and on two
    assert scored_images(one, 1, monkeypatch) == scored_images(two, 2, monkeypatch) == list(range(16))
