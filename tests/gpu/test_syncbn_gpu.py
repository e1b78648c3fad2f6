"""SyncBatchNorm on 2 GPUs computes the full-batch statistics (DeepLabv3 Table 11 with data-parallel workers).

Each of two NCCL ranks normalises half of a batch with ``nn.SyncBatchNorm``; the per-channel mean and
(biased) variance it normalises with, read back from its output and from its running statistics after one
update with momentum 1, must equal those of ``nn.BatchNorm2d`` applied to the whole batch in one process.
Needs two CUDA devices; skipped otherwise.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2,
                       reason="SyncBN statistics check needs >= 2 CUDA devices (NCCL, one rank per GPU)"),
]

CHANNELS = 5


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spawned ranks inherit these: nothing they import waits for a network (as in tests/gpu/test_gpu.py)."""
    from tests.helpers.gpu import OFFLINE_ENV

    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)


def full_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, CHANNELS, 6, 7, generator=generator) * 3.0 + torch.arange(CHANNELS).view(1, -1, 1, 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_statistics(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: SyncBN (momentum 1) on its half of the batch; saves output and running statistics."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    try:
        torch.cuda.set_device(rank)
        shard = full_batch().chunk(world_size)[rank].cuda(rank)
        bn = nn.SyncBatchNorm(CHANNELS, momentum=1.0, affine=False).cuda(rank).train()
        output = bn(shard)
        torch.save(
            {"output": output.cpu(), "running_mean": bn.running_mean.cpu(), "running_var": bn.running_var.cpu()},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_syncbn_on_two_gpus_uses_the_full_batch_statistics(tmp_path: Path) -> None:
    mp.spawn(rank_statistics, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    batch = full_batch().double()
    mean = batch.mean(dim=(0, 2, 3))
    biased_var = batch.var(dim=(0, 2, 3), unbiased=False)
    unbiased_var = batch.var(dim=(0, 2, 3), unbiased=True)
    reference = nn.BatchNorm2d(CHANNELS, momentum=1.0, affine=False).double().train()
    expected_output = reference(batch)

    for stats in ranks:  # running statistics after one update with momentum 1 = this batch's statistics
        torch.testing.assert_close(stats["running_mean"].double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats["running_var"].double(), unbiased_var, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference.running_mean, mean)
    output = torch.cat([stats["output"] for stats in ranks]).double()
    torch.testing.assert_close(output, expected_output, rtol=1e-4, atol=1e-4)
    # ranks normalised with the full batch's per-channel mean and biased variance
    normalised_var = biased_var / (biased_var + reference.eps)
    torch.testing.assert_close(output.mean(dim=(0, 2, 3)), torch.zeros_like(mean), rtol=0, atol=1e-5)
    torch.testing.assert_close(output.var(dim=(0, 2, 3), unbiased=False), normalised_var, rtol=1e-4, atol=1e-4)
