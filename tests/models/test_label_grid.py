"""Labels on the score grid (``model.downsample_labels``) and the bootstrapping loss counted on that grid.

Known answers: a 513x513 label at OS 8 becomes exactly ``labels[::8, ::8]`` (65x65), where the former
``F.interpolate(mode="nearest")`` sampled 0, 7, 15, ..., 505 and misses VOC's void outlines that the grid hits;
the non-integer fallback's indices by hand; the bootstrapping loss on a downsampled label keeps every labelled
pixel of a crop with fewer than ``top_k`` and exactly ``top_k`` of one with more; and the LightningModule's
``output_loss`` uses that grid.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from segexp.models.backbones.resnet import ResNet
from segexp.models.heads.fcn import FCNHead
from segexp.models.losses.bootstrap import BootstrappedCrossEntropy
from segexp.models.losses.cross_entropy import CrossEntropy
from segexp.models.losses.label_grid import labels_on_score_grid
from segexp.models.segmentor import Segmentor
from segexp.training.module import SegmentationModule
from segexp.training.schedules.poly import PolySchedule

VOID = 255
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no Trainer here


def old_downsampling(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """What ``output_loss`` did before: ``F.interpolate`` nearest to the logits' size."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def pattern_label(size: int = 513) -> Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = (rows * 7 + cols * 3) % 21
    labels[(rows + cols) % 37 == 0] = VOID
    return labels[None]


def test_a_513_label_at_os8_is_every_eighth_pixel_from_the_first_to_the_last() -> None:
    labels = pattern_label()
    small = labels_on_score_grid(labels, (65, 65))
    assert small.shape == (1, 65, 65)
    assert torch.equal(small, labels[..., ::8, ::8])
    rows = torch.arange(65)
    assert torch.equal(small[0], labels[0][rows * 8][:, rows * 8])  # input pixels 0, 8, ..., 512
    old = old_downsampling(labels, (65, 65))
    assert not torch.equal(old, small)  # the former code fails this test
    index = torch.arange(513 * 513).reshape(1, 513, 513)
    assert old_downsampling(index, (65, 65))[0, 0, [1, 2, 64]].tolist() == [7, 15, 505]  # drifting off the grid


def test_void_on_the_grid_stays_void_and_an_outline_survives_where_the_grid_hits_it() -> None:
    labels = torch.zeros(1, 513, 513, dtype=torch.long)
    labels[:, 96:305, 120:401] = VOID  # VOC: a one-pixel void outline around each object...
    labels[:, 97:304, 121:400] = 5  # ...and the object inside
    small = labels_on_score_grid(labels, (65, 65))
    assert (small[0, 12, 15:51] == VOID).all()  # row 96 = 12 * 8: the top outline
    assert (small[0, 38, 15:51] == VOID).all()  # row 304 = 38 * 8: the bottom outline
    assert (small[0, 12:39, 15] == VOID).all() and (small[0, 12:39, 50] == VOID).all()  # columns 120, 400
    assert (small[0, 13:38, 16:50] == 5).all()
    # Nearest sampling: every score pixel is the label at its input pixel, so void is never replaced by a class.
    assert int((small == VOID).sum()) == int((labels[..., ::8, ::8] == VOID).sum()) == 2 * 36 + 2 * 25
    old = old_downsampling(labels, (65, 65))
    assert not (old[0, 12, 15:51] == VOID).any()  # the old sampling reads row floor(12 * 7.89) = 94


def test_the_fallback_for_a_non_integer_stride_is_corner_aligned_rounded_half_up() -> None:
    # 11 -> 5: ceil(11 / s) == 5 has no integer solution (s in [2.2, 2.75)); positions i * 10 / 4.
    cols = torch.arange(11).expand(1, 7, 11)
    rows = torch.arange(7)[:, None].expand(1, 7, 11)
    labels = rows * 100 + cols
    small = labels_on_score_grid(labels, (3, 5))  # 7 -> 3: s = 3 fits the rows but not the columns
    assert small[0, 0].tolist() == [0, 3, 5, 8, 10]  # 0, 2.5, 5, 7.5, 10 rounded half up
    assert (small[0, :, 0] // 100).tolist() == [0, 3, 6]  # rows 0, 3, 6: i * 6 / 2
    # 513 at 0.75x is 385 pixels, 49 scores at OS 8: input positions i * 512 / 48 = i * 10.67.
    index = torch.arange(513).expand(1, 513, 513)
    grid = labels_on_score_grid(index, (49, 49))[0, 0]
    assert grid[:4].tolist() == [0, 11, 21, 32] and int(grid[-1]) == 512
    assert torch.equal(grid, torch.tensor([int(i * 512 / 48 + 0.5) for i in range(49)]))


def test_a_known_stride_settles_maps_smaller_than_their_stride() -> None:
    labels = torch.arange(10).expand(1, 10, 10)
    assert labels_on_score_grid(labels, (2, 2))[0, 0].tolist() == [0, 5]  # the smallest s that fits: 5
    assert labels_on_score_grid(labels, (2, 2), stride=8)[0, 0].tolist() == [0, 8]
    assert labels_on_score_grid(labels, (5, 5), stride=8)[0, 0].tolist() == [0, 2, 4, 6, 8]  # hint does not fit
    assert labels_on_score_grid(labels, (10, 10)) is labels


def test_the_resnet_score_grid_has_ceil_of_size_over_stride_pixels() -> None:
    """The sizing the integer case relies on: 'same'-padded strides give ceil(H / OS) x ceil(W / OS) scores."""
    backbone = ResNet(18, output_stride=8).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 33, 41))["out"]
    assert out.shape[-2:] == (5, 6)


def per_pixel_ce(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, ignore_index=VOID, reduction="none")


def test_bootstrapping_on_the_score_grid_keeps_all_of_few_labels_and_top_k_of_many() -> None:
    torch.manual_seed(0)
    labels = torch.full((2, 513, 513), VOID)
    labels[0, :64, :80] = 3  # crop 0: 8 x 10 = 80 labelled grid pixels (< top_k)
    labels[1] = pattern_label()[0]  # crop 1: thousands labelled
    small = labels_on_score_grid(labels, (65, 65))
    labelled = (small != VOID).flatten(1).sum(1)
    assert labelled[0] == 80 and labelled[1] > 100
    logits = torch.randn(2, 21, 65, 65)
    loss = BootstrappedCrossEntropy(top_k=100)

    alone = loss(logits[:1], small[:1])  # fewer labelled pixels than top_k: all of them, plain CE
    assert torch.allclose(alone, F.cross_entropy(logits[:1], small[:1], ignore_index=VOID), atol=1e-6)

    ce = per_pixel_ce(logits, small)
    hardest = ce[1][small[1] != VOID].sort(descending=True).values[:100]
    expected = (ce[0][small[0] != VOID].sum() + hardest.sum()) / (80 + 100)
    assert torch.allclose(loss(logits, small), expected, atol=1e-6)
    keep = loss.kept_pixels(ce, small != VOID)
    assert keep.flatten(1).sum(1).tolist() == [80, 100]


def module_with(loss: torch.nn.Module) -> SegmentationModule:
    torch.manual_seed(0)
    backbone = ResNet(18, output_stride=8)
    segmentor = Segmentor(backbone, FCNHead(backbone.out_channels, 4, output_stride=8)).eval()
    return SegmentationModule(segmentor, loss, PolySchedule(), class_names=tuple("abcd"), downsample_labels=True)


def test_output_loss_with_downsample_labels_reads_the_labels_on_the_score_grid() -> None:
    torch.manual_seed(1)
    labels = torch.randint(0, 4, (2, 65, 65))
    labels[:, 30:40] = VOID
    logits = torch.randn(2, 4, 9, 9)  # 65 at OS 8: ceil(65 / 8) = 9 scores, on input pixels 0, 8, ..., 64
    batch = {"image": torch.zeros(2, 3, 65, 65), "label": labels}
    module = module_with(CrossEntropy())
    expected = F.cross_entropy(logits, labels[:, ::8, ::8], ignore_index=VOID)
    assert torch.allclose(module.output_loss(logits, batch), expected, atol=1e-6)
    old = F.cross_entropy(logits, old_downsampling(labels, (9, 9)), ignore_index=VOID)
    assert not torch.allclose(old, expected, atol=1e-4)  # the former sampling (0, 7, 14, ...) differs

    bootstrapped = module_with(BootstrappedCrossEntropy(top_k=20))
    ce = per_pixel_ce(logits, labels[:, ::8, ::8])
    hardest = [ce[b][labels[b, ::8, ::8] != VOID].sort(descending=True).values[:20] for b in range(2)]
    assert torch.allclose(bootstrapped.output_loss(logits, batch), torch.cat(hardest).mean(), atol=1e-6)


def test_shifted_pass_outputs_use_half_the_stride() -> None:
    module = module_with(CrossEntropy())
    assert module.score_stride == 8
    module.train_shift_passes = True
    assert module.score_stride == 4
    labels = torch.randint(0, 4, (1, 65, 65))
    logits = torch.randn(1, 4, 17, 17)  # four shifted passes: 65 at OS 4 -> 17
    expected = F.cross_entropy(logits, labels[:, ::4, ::4])
    assert torch.allclose(module.output_loss(logits, {"label": labels}), expected, atol=1e-6)
