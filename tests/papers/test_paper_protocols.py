"""End-to-end checks that a paper's `full` rows train what its text says, on the composed configs of the rows
(the path `segexp-table run <id> --profile full` takes), with the model built as training builds it."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from segexp.training.build import build_datamodule, build_module
from tests.helpers.tables import full_jobs


def _labels_the_loss_sees(table: str, row: str, size: int) -> torch.Tensor:
    """Build the training module of ``row`` (random weights) and return the labels its loss receives for one
    ``size`` x ``size`` crop whose pixels are all labelled."""
    _, jobs = full_jobs(table)
    job = next(job for job in jobs if job.row.name == row and job.kind != "eval")
    cfg = job.cfg.copy()
    OmegaConf.update(cfg, "backbone.pretrained", None)
    module = build_module(cfg, build_datamodule(cfg)).eval()
    seen: list[torch.Tensor] = []
    module.compute_loss = lambda logits, labels, batch: seen.append(labels) or logits.sum() * 0  # type: ignore[method-assign]
    images = torch.randn(1, 3, size, size)
    labels = torch.arange(size * size).reshape(1, size, size) % 21
    with torch.no_grad():
        module.output_loss(module.model.forward_raw(images)["out"], {"image": images, "label": labels})
    return seen[0]


def test_fcrn_table3_trains_each_output_stride_on_labels_of_its_own_score_grid() -> None:
    """FCRN Sec. 4.4: training at 1/8 presents 'finer labels' than at 1/16; Sec. 3.3 / 4.5 count the labelled
    pixels of the score map (K = 512 of them). A 129-pixel crop has 17 x 17 labels at 1/8, 9 x 9 at 1/16."""
    fine = _labels_the_loss_sees("fcrn.t3", "train8_test8", 129)
    coarse = _labels_the_loss_sees("fcrn.t3", "train16_test16", 129)
    assert fine.shape[-2:] == (17, 17) and coarse.shape[-2:] == (9, 9)
    grid = torch.arange(129 * 129).reshape(129, 129) % 21
    assert torch.equal(fine[0], grid[::8, ::8]) and torch.equal(coarse[0], grid[::16, ::16])
