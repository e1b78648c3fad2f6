"""Data-parallel equivalence (DeepLabv3 Table 11, replicas): R ranks x batch b == one process x batch R*b.

The sampler shards the epoch order by rank (every R-th entry), so batch k of the R ranks together is batch k
of one process with an R times larger batch; with frozen BN (no batch statistics) and an equal number of
labelled pixels per sample, DDP's averaged gradients then equal the full-batch gradient, and the weights
after a few SGD steps agree to float32 rounding, whether Lightning or torchrun starts the two ranks.

Evaluation shards the split without padding (:class:`segexp.data.datamodule.EvalSampler`): unit checks in
``tests/training/test_eval_sharding.py``, validation under DDP and ``segexp-eval`` on two processes in
``tests/end_to_end/test_ddp_eval.py`` (slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segexp.cli.train import run_training
from segexp.config import compose_config
from segexp.data.datamodule import SeededSampler
from segexp.training.build import build_datamodule, build_module
from tests.helpers.runs import EQUIVALENCE_RUN


def rank_batches(sampler: SeededSampler, batch_size: int) -> list[list[tuple[int, int]]]:
    entries = list(sampler)
    return [entries[i : i + batch_size] for i in range(0, len(entries) - batch_size + 1, batch_size)]


@pytest.mark.parametrize(("size", "replicas", "batch"), [(20, 2, 3), (17, 2, 2), (30, 3, 4), (9, 4, 1)])
@pytest.mark.parametrize("repeats", [False, True])
def test_rank_batches_together_are_the_single_process_batch(size: int, replicas: int, batch: int, repeats: bool):
    counts = [1 + i % 3 for i in range(size)] if repeats else None
    single = SeededSampler(size, seed=7, drop_last=True, repeats=counts, num_replicas=1, rank=0)
    ranks = [SeededSampler(size, seed=7, drop_last=True, repeats=counts, num_replicas=replicas, rank=r)
             for r in range(replicas)]
    for epoch in (0, 3):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        combined = rank_batches(single, replicas * batch)
        per_rank = [rank_batches(sampler, batch) for sampler in ranks]
        assert all(len(batches) == len(combined) for batches in per_rank) and combined
        for k, full in enumerate(combined):  # same (index, augmentation seed) pairs
            assert Counter(pair for batches in per_rank for pair in batches[k]) == Counter(full)


def test_sampler_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, num_replicas=2\)"):
        SeededSampler(10, seed=0, num_replicas=2, rank=2)




def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


LIGHTNING_STARTS_RANKS = ["-m", "segexp.cli.train"]
"""Lightning starts rank 1 itself by re-running the command line."""
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "segexp.cli.train"]
"""``torchrun --standalone --nproc_per_node=2 -m segexp.cli.train``: torchrun starts both ranks (Lightning's
TorchElasticEnvironment); ``hydra.run.dir`` is given, so both ranks share one run dir."""


@pytest.mark.parametrize("launcher", [LIGHTNING_STARTS_RANKS, TORCHRUN], ids=["lightning", "torchrun"])
def test_ddp_on_two_cpu_processes_matches_one_process_on_the_combined_batch(tmp_path: Path,
                                                                            launcher: list[str]) -> None:
    ddp_dir = tmp_path / "ddp"
    command = [sys.executable, *launcher, *EQUIVALENCE_RUN, "trainer=ddp_cpu", "data.batch_size=2",
               f"hydra.run.dir={ddp_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((ddp_dir / "metrics.json").read_text())  # written by rank 0
    assert (metrics["world_size"], metrics["effective_batch"], metrics["steps"]) == (2, 4, 3)

    single_cfg = compose_config([*EQUIVALENCE_RUN, "data.batch_size=4", f"output_dir={tmp_path / 'single'}"])
    run_training(single_cfg)

    pl.seed_everything(0, verbose=False)
    initial = build_module(single_cfg, build_datamodule(single_cfg)).state_dict()
    ddp, single = final_weights(ddp_dir), final_weights(tmp_path / "single")
    assert max_difference(single, initial) > 1e-3  # three steps moved the weights ...
    assert max_difference(ddp, single) < 1e-5  # ... identically in both runs







