"""Known-answer tests for the PAC head and the boundary-aware loss (Yu, PAC + BAL paper, Sec. 3.2-3.4, 4.1)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segexp.cli.bal_map import HEADER, colour_label
from segexp.cli.bal_map import main as bal_map_main
from segexp.cli.train import run_training
from segexp.config import ConfigError
from segexp.data.datasets.camvid import CamVid
from segexp.models.build import build_segmentor
from segexp.models.heads.pac import PACHead, PyramidAtrousConv
from segexp.models.losses.boundary_aware import (
    BoundaryAwareLoss,
    blur_kernel,
    class_edges,
    edge_count,
    reference_edge_weights,
)
from segexp.training.build import validate
from tests.helpers.data_files import HEIGHT, WIDTH, make_camvid

V = 255  # void


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------------
# PAC head: parameter count from the layer formula
# --------------------------------------------------------------------------------------------------------


def pac_head_formula(cin: int, c: int, rates: int, classes: int, merge: str = "sum", bn: str = "after_merge",
                     image_pooling: bool = True) -> int:
    conv_bn = cin * c + 2 * c  # 1x1 conv (no bias) + BN (weight, bias)
    pac = 9 * cin * c  # the ONE shared 3x3 weight, whatever the number of rates
    if merge == "concat":
        pac += rates * c * c  # 1x1 conv squeezing the concatenated rates to c
    if bn == "per_rate":
        pac += rates * 2 * c + (2 * c if merge == "concat" else 0)
    else:
        pac += 2 * c
    branches = 2 + int(image_pooling)
    return conv_bn * (1 + int(image_pooling)) + pac + branches * c * classes + classes  # classifier with bias


@pytest.mark.parametrize("merge", ["sum", "concat"])
@pytest.mark.parametrize("bn", ["after_merge", "per_rate"])
@pytest.mark.parametrize("rates", [(1, 3, 5), (1, 3, 5, 7, 9)])
def test_pac_parameter_count(merge: str, bn: str, rates: tuple[int, ...]) -> None:
    head = PACHead(32, 5, output_stride=16, channels=8, rates=rates, merge=merge, bn=bn)
    assert n_params(head) == pac_head_formula(32, 8, len(rates), 5, merge, bn)
    assert head.pac.conv.weight.shape == (8, 32, 3, 3)  # one 3x3 weight for every rate
    no_pool = PACHead(32, 5, output_stride=16, channels=8, rates=rates, merge=merge, bn=bn, image_pooling=False)
    assert n_params(no_pool) == pac_head_formula(32, 8, len(rates), 5, merge, bn, image_pooling=False)


def test_pac_sum_weights_do_not_grow_with_rates_and_paper_size() -> None:
    three = PACHead(2048, 21, output_stride=16, rates=(1, 3, 5))
    five = PACHead(2048, 21, output_stride=16, rates=(1, 3, 5, 7, 9))
    assert n_params(three) == n_params(five)  # sum: only the number of dilations changes
    # ResNet-101 features (2048), 256 channels, 21 VOC classes, rates 1,3,5,7,9, sum (Table 2's best):
    # 1x1 2048*256+512, pooling 2048*256+512, PAC 9*2048*256+512, classifier 768*21+21
    assert n_params(five) == 524_800 + 524_800 + 4_719_104 + 16_149 == 5_784_853
    # no 256-channel projection between the concat and the classifier (unlike ASPP)
    assert five.classifier.in_channels == 3 * 256 and five.classifier.kernel_size == (1, 1)
    concat = PACHead(2048, 21, output_stride=16, rates=(1, 3, 5, 7, 9), merge="concat")
    assert n_params(concat) == 5_784_853 + 5 * 256 * 256


# --------------------------------------------------------------------------------------------------------
# PAC: known answers
# --------------------------------------------------------------------------------------------------------


def test_pac_all_rates_one_is_n_times_one_conv() -> None:
    torch.manual_seed(0)
    pac = PyramidAtrousConv(6, 4, dilations=(1, 1, 1, 1, 1), merge="sum").eval()
    x = torch.randn(2, 6, 9, 7)
    single = F.conv2d(x, pac.conv.weight, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(pac.merged(x), 5 * single)
        # the whole PAC in eval mode, BN with known statistics: ReLU((5 conv - mean) / sqrt(var + eps) * g + b)
        mean, var = torch.linspace(-1, 1, 4), torch.linspace(0.5, 2, 4)
        gamma, beta = torch.tensor([1.0, 2.0, 0.5, -1.0]), torch.tensor([0.1, -0.2, 0.0, 0.3])
        pac.bn.running_mean.copy_(mean)
        pac.bn.running_var.copy_(var)
        pac.bn.weight.copy_(gamma)
        pac.bn.bias.copy_(beta)
        expected = ((5 * single - mean[:, None, None]) / torch.sqrt(var[:, None, None] + pac.bn.eps)
                    * gamma[:, None, None] + beta[:, None, None]).clamp(min=0)
        torch.testing.assert_close(pac(x), expected)


@pytest.mark.parametrize(("output_stride", "dilations"), [(16, (1, 3)), (8, (2, 6))])
def test_pac_impulse_response_places_the_shared_taps_at_each_dilation(output_stride: int,
                                                                     dilations: tuple[int, ...]) -> None:
    """A unit impulse at (c, c) through the 1-channel shared filter W (3x3, values 1..9): each rate d puts W's
    tap (i, j) at (c - (i-1) d, c - (j-1) d) (conv2d correlates), the centre gets n * W[1, 1]."""
    head = PACHead(1, 2, output_stride=output_stride, channels=1, rates=(1, 3), image_pooling=False)
    assert head.dilations == dilations
    w = torch.arange(1.0, 10.0).reshape(3, 3)
    with torch.no_grad():
        head.pac.conv.weight.copy_(w[None, None])
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    expected = torch.zeros(15, 15)
    for d in dilations:
        for i in range(3):
            for j in range(3):
                expected[7 - (i - 1) * d, 7 - (j - 1) * d] += w[i, j]
    assert expected[7, 7] == 2 * 5
    torch.testing.assert_close(head.pac.merged(x)[0, 0], expected)


def test_pac_output_shape_and_branches() -> None:
    x = torch.randn(2, 32, 9, 11)
    for merge in ("sum", "concat"):
        for bn in ("after_merge", "per_rate"):
            head = PACHead(32, 5, output_stride=16, channels=8, merge=merge, bn=bn)
            assert head(x).shape == (2, 5, 9, 11)
    no_pool = PACHead(32, 5, output_stride=16, channels=8, image_pooling=False)
    assert no_pool.num_branches == 2 and no_pool.classifier.in_channels == 16
    assert no_pool(x).shape == (2, 5, 9, 11)
    assert isinstance(PACHead(32, 5, 16, dropout=0.1).dropout, nn.Dropout2d)
    assert isinstance(PACHead(32, 5, 16).dropout, nn.Identity)




def test_pac_invalid_arguments_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"head.merge='max'"):
        PACHead(8, 2, 16, merge="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"head.bn='before'"):
        PACHead(8, 2, 16, bn="before")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"head.rates=\[0, 1\]"):
        PACHead(8, 2, 16, rates=(0, 1))


def test_pac_image_pooling_batch_1_names_the_head() -> None:
    head = PACHead(8, 2, 16, channels=4).train()
    with pytest.raises(ValueError, match=r"PACHead image-level branch.*batch size >= 2"):
        head(torch.randn(1, 8, 5, 5))
    PACHead(8, 2, 16, channels=4, image_pooling=False).train()(torch.randn(1, 8, 5, 5))


def test_head_pac_composes_and_builds(make_cfg) -> None:
    # experiment=synthetic sets head.rates=[2,4,6] at rates_output_stride 8 for whichever head; a plain
    # head=pac keeps the paper's rates at OS 16
    assert build_segmentor(make_cfg("head=pac"), num_classes=6).head.dilations == (2, 4, 6)
    cfg = make_cfg("head=pac", "head.rates=[1,3,5,7,9]", "head.rates_output_stride=16")
    validate(cfg)
    model = build_segmentor(cfg, num_classes=6)
    assert isinstance(model.head, PACHead)
    assert model.head.dilations == (2, 6, 10, 14, 18)  # the synthetic experiment's OS 8 backbone
    assert model.head.classifier.in_channels == 3 * 16  # head.channels=16 in the fast run
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 6, 64, 64)
    concat = build_segmentor(make_cfg("head=pac", "head.merge=concat", "head.bn=per_rate"), num_classes=6)
    assert concat.head.pac.project is not None and len(concat.head.pac.rate_bns) == 3  # rates [2, 4, 6]
    with pytest.raises(ConfigError, match=r"head.merge='max'"):
        validate(make_cfg("head=pac", "head.merge=max"))
    with pytest.raises(ConfigError, match=r"model.eval_output_stride=32.*PAC rates.*rate 1 would be dilation 0.5"):
        build_segmentor(make_cfg("head=pac", "head.rates=[1,3]", "head.rates_output_stride=16",
                                 "model.eval_output_stride=32"), num_classes=6)


# --------------------------------------------------------------------------------------------------------
# BAL: kernels (Eqs. 5-6, normalised to [0, 1])
# --------------------------------------------------------------------------------------------------------


def test_bal_kernels() -> None:
    # linear, size 3: 3 - L1 distance = [[1,2,1],[2,3,2],[1,2,1]] -> min-max
    torch.testing.assert_close(blur_kernel("linear", 3), torch.tensor([[0, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 0]]))
    # linear, size 5: 5 - d, d in 0..4 -> (4 - d) / 4
    d = torch.tensor([2.0, 1, 0, 1, 2])
    torch.testing.assert_close(blur_kernel("linear", 5), (4 - (d[:, None] + d[None, :])) / 4)
    # gaussian, size 3, sigma 1: exp(-r^2 / 3), r^2 in {0, 1, 2}
    mid = (math.exp(-1 / 3) - math.exp(-2 / 3)) / (1 - math.exp(-2 / 3))
    torch.testing.assert_close(blur_kernel("gaussian", 3, 1.0), torch.tensor([[0, mid, 0], [mid, 1, mid], [0, mid, 0]]))
    # the paper's best: size 35, sigma 3 -> exp(-r^2 / 105); corner r^2 = 2 * 17^2
    k = blur_kernel("gaussian", 35, 3.0)
    low = math.exp(-578 / 105)
    assert k[17, 17] == 1 and k[0, 0] == 0 and k.shape == (35, 35)
    assert float(k[17, 18]) == pytest.approx((math.exp(-1 / 105) - low) / (1 - low), rel=1e-6)
    assert float(k[17, 0]) == pytest.approx((math.exp(-289 / 105) - low) / (1 - low), rel=1e-6)
    assert blur_kernel("linear", 1).tolist() == [[1.0]]


def test_bal_invalid_settings_name_the_key(make_cfg) -> None:
    with pytest.raises(ValueError, match=r"loss.kernel='box'"):
        BoundaryAwareLoss(kernel="box")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"loss.size=4"):
        BoundaryAwareLoss(size=4)
    with pytest.raises(ValueError, match=r"loss.down=0"):
        BoundaryAwareLoss(down=0)
    with pytest.raises(ValueError, match=r"loss.sigma=0"):
        BoundaryAwareLoss(sigma=0.0)
    with pytest.raises(ConfigError, match=r"loss.kernel='box'"):
        validate(make_cfg("loss=bal", "loss.kernel=box"))


# --------------------------------------------------------------------------------------------------------
# BAL: edge maps by hand (Eqs. 1-3)
# --------------------------------------------------------------------------------------------------------

# Classes 0 (top left), 1 (right), 2 (bottom left) and one void pixel at (5, 2).
LABEL_6X6 = torch.tensor([
    [0, 0, 0, 1, 1, 1],
    [0, 0, 0, 1, 1, 1],
    [0, 0, 0, 1, 1, 1],
    [2, 2, 2, 1, 1, 1],
    [2, 2, 2, 1, 1, 1],
    [2, 2, V, 1, 1, 1],
])

# Eq. 1 with f_E convolved (flipped): a pixel is an edge of class i when [label = i] differs from its left or
# upper neighbour's. Void is no class: the void pixel (5, 2) is an edge of class 2 (its left and upper
# neighbours are 2), blurred like any other edge; (5, 3) is an edge of class 1 only (its left neighbour is void).
E0 = [
    [0, 0, 0, 1, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
]
E1 = [[0, 0, 0, 1, 0, 0]] * 6
E2 = [
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [0, 0, 1, 0, 0, 0],
]
COUNT = [
    [0, 0, 0, 2, 0, 0],
    [0, 0, 0, 2, 0, 0],
    [0, 0, 0, 2, 0, 0],
    [2, 2, 2, 2, 0, 0],
    [0, 0, 0, 2, 0, 0],
    [0, 0, 1, 1, 0, 0],
]
# linear kernel, size 3 ([[0,.5,0],[.5,1,.5],[0,.5,0]]), down 1, zero padding, + beta 0.5:
# E_G(y, x) = COUNT(y, x) + 0.5 * (sum of the 4 neighbours' COUNT) + 0.5
E_G_LINEAR3 = [
    [0.5, 0.5, 1.5, 3.5, 1.5, 0.5],
    [0.5, 0.5, 1.5, 4.5, 1.5, 0.5],
    [1.5, 1.5, 2.5, 4.5, 1.5, 0.5],
    [3.5, 4.5, 4.5, 5.5, 1.5, 0.5],
    [1.5, 1.5, 3.0, 4.0, 1.5, 0.5],
    [0.5, 1.0, 2.0, 3.0, 1.0, 0.5],
]


def test_bal_edges_and_e_g_by_hand() -> None:
    edges = class_edges(LABEL_6X6[None], num_classes=3)
    assert edges.shape == (1, 3, 6, 6)
    assert edges[0].tolist() == [E0, E1, E2]
    assert edge_count(LABEL_6X6[None])[0, 0].tolist() == COUNT
    loss = BoundaryAwareLoss(kernel="linear", down=1, size=3, beta=0.5)
    assert loss.edge_weights(LABEL_6X6[None])[0].tolist() == E_G_LINEAR3
    reference = reference_edge_weights(LABEL_6X6[None], 3, blur_kernel("linear", 3), down=1, beta=0.5)
    assert reference[0].tolist() == E_G_LINEAR3


def test_bal_border_is_not_an_edge_and_orientation() -> None:
    # a vertical boundary: the right-hand pixel of each row is the edge (of both classes), not the image border
    label = torch.tensor([[0, 0, 1, 1]] * 3)[None]
    assert edge_count(label)[0, 0].tolist() == [[0, 0, 2, 0]] * 3
    # a horizontal boundary: the lower row
    assert edge_count(label.transpose(1, 2))[0, 0].tolist() == [[0, 0, 0], [0, 0, 0], [2, 2, 2], [0, 0, 0]]
    assert edge_count(torch.full((1, 5, 5), 3))[0, 0].abs().sum() == 0


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("down", [1, 2, 4])
@pytest.mark.parametrize("antialias", [True, False])
def test_bal_fast_form_equals_the_per_class_sum(kernel: str, down: int, antialias: bool) -> None:
    torch.manual_seed(down)
    target = torch.randint(0, 5, (2, 37, 29))
    target[torch.rand(target.shape) < 0.15] = V
    target[0, 10:20, 5:25] = 3  # a region, besides the noise
    loss = BoundaryAwareLoss(kernel=kernel, down=down, size=7, sigma=2.0, beta=0.3, antialias=antialias)
    expected = reference_edge_weights(target, 5, loss.blur, down, 0.3, antialias=antialias)
    torch.testing.assert_close(loss.edge_weights(target), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(edge_count(target)[:, 0], class_edges(target, 5).sum(dim=1))


def test_bal_antialiased_downsampling_keeps_every_edge() -> None:
    """Plain bilinear sampling at down 4 reads 2 of every 4 columns and loses a 1-pixel edge between them."""
    kept, lost = [], []
    for column in range(8, 12):
        label = torch.zeros(1, 16, 32, dtype=torch.long)
        label[:, :, column:] = 1  # the edge is column `column`
        smooth = BoundaryAwareLoss(kernel="linear", down=4, size=1, beta=0.0).edge_weights(label)
        plain = BoundaryAwareLoss(kernel="linear", down=4, size=1, beta=0.0, antialias=False).edge_weights(label)
        kept.append(float(smooth.max()) > 0)
        lost.append(float(plain.max()) == 0)
    assert all(kept) and any(lost)


# --------------------------------------------------------------------------------------------------------
# BAL: the loss (Eq. 4)
# --------------------------------------------------------------------------------------------------------


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_bal_equals_the_formula_by_hand() -> None:
    # label [[0, 0, 1], [0, void, 1]]; kernel size 1 (E_G = edge count + beta), down 1, beta 0.5
    # edge counts: (0,2) classes 0 and 1 -> 2; (1,2) left neighbour void -> class 1 only -> 1; else 0
    target = torch.tensor([[[0, 0, 1], [0, V, 1]]])
    per_pixel = [[[2.0, -1.0], [0.5, 0.5], [1.0, 0.0]], [[0.0, 3.0], [9.0, -9.0], [-2.0, 1.0]]]  # (y, x, class)
    logits = torch.tensor(per_pixel).permute(2, 0, 1)[None]
    e_g = [[0.5, 0.5, 2.5], [0.5, None, 1.5]]
    terms = [e_g[y][x] * _ce(per_pixel[y][x], int(target[0, y, x])) for y in range(2) for x in range(3)
             if (y, x) != (1, 1)]
    loss = BoundaryAwareLoss(kernel="gaussian", down=1, size=1, beta=0.5)
    assert float(loss(logits, target)) == pytest.approx(sum(terms) / 5)
    # kernel size 3 (linear): E_G from the hand-made 6x6 map above
    logits6 = torch.randn(1, 3, 6, 6)
    ce = F.cross_entropy(logits6, LABEL_6X6[None], ignore_index=V, reduction="none")
    expected = (torch.tensor(E_G_LINEAR3) * ce[0]).sum() / 35
    loss6 = BoundaryAwareLoss(kernel="linear", down=1, size=3, beta=0.5)
    torch.testing.assert_close(loss6(logits6, LABEL_6X6[None]), expected)


def test_bal_weights_stay_float32_under_autocast() -> None:
    loss = BoundaryAwareLoss(kernel="linear", down=1, size=3, beta=0.5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        weights = loss.edge_weights(LABEL_6X6[None])
    assert weights.dtype == torch.float32 and weights[0].tolist() == E_G_LINEAR3


def test_bal_without_edges_is_beta_times_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 24, 20)
    target = torch.full((2, 24, 20), 2)
    target[1] = 3
    for kwargs in ({}, {"kernel": "linear", "down": 2, "size": 15, "beta": 0.3}):
        loss = BoundaryAwareLoss(**kwargs)
        assert torch.all(loss.edge_weights(target) == loss.beta)
        torch.testing.assert_close(loss(logits, target), loss.beta * F.cross_entropy(logits, target))


def test_bal_ignored_pixels_carry_no_loss_but_their_edges_are_blurred() -> None:
    torch.manual_seed(1)
    target = torch.randint(0, 4, (2, 16, 16))
    target[:, 4:9, 3:12] = V
    target[target == 2] = V
    void = target == V
    # Eq. 1 on the one-hot label: a void pixel (indicator 0 for every class) is an edge of each class its left
    # or upper neighbour belongs to (neighbours replicated at the image border)
    count = edge_count(target)[:, 0]
    for n, y, x in void.nonzero().tolist():
        neighbours = {int(target[n, y, max(x - 1, 0)]), int(target[n, max(y - 1, 0), x])} - {V}
        assert count[n, y, x] == len(neighbours), (n, y, x)
    assert count[void].sum() > 0
    torch.testing.assert_close(edge_count(target)[:, 0], class_edges(target, 4).sum(dim=1))
    loss = BoundaryAwareLoss(down=2, size=5)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    assert logits.grad[void[:, None].expand(-1, 4, -1, -1)].abs().sum() == 0
    changed = logits.detach().clone()
    changed[void[:, None].expand(-1, 4, -1, -1)] = 100.0
    torch.testing.assert_close(loss(changed, target), value.detach())
    all_void = loss(logits, torch.full((2, 16, 16), V)).detach()
    assert float(all_void) == 0.0 and not math.isnan(float(all_void))


def test_loss_bal_composes_and_trains(make_cfg) -> None:
    cfg = make_cfg("loss=bal", "trainer.max_steps=2", "trainer.val_check_interval=2")
    assert cfg.loss.kernel == "gaussian" and (cfg.loss.down, cfg.loss.size, cfg.loss.sigma, cfg.loss.beta) == (
        4, 35, 3.0, 0.5)  # Table 1's best row
    metrics = run_training(cfg)
    assert metrics["steps"] == 2 and math.isfinite(metrics["mIoU"])


# --------------------------------------------------------------------------------------------------------
# segexp-bal-map
# --------------------------------------------------------------------------------------------------------


def test_bal_map_writes_the_picture(tmp_path: Path) -> None:
    root = make_camvid(tmp_path, {"val": 2})
    out = tmp_path / "pictures" / "bal.png"
    bal_map_main([f"dataset.root={root}", "loss.kernel=linear", "loss.size=3", "loss.down=1", "--index", "1",
                  "--out", str(out)])
    with Image.open(out) as picture:
        assert picture.size == (3 * WIDTH, HEIGHT + HEADER)
        pixels = np.asarray(picture.convert("RGB"))
    sample = CamVid(root, "val")[1]
    image = pixels[HEADER:, :WIDTH]
    np.testing.assert_array_equal(image, sample["image"].permute(1, 2, 0).numpy())
    label = pixels[HEADER:, WIDTH : 2 * WIDTH]
    np.testing.assert_array_equal(label, colour_label(sample["label"].numpy(), CamVid.PALETTE))
    weights = pixels[HEADER:, 2 * WIDTH :]
    void = sample["label"].numpy() == V
    assert void.any() and (weights[void] == 255).all()  # void white in the E_G panel


def test_bal_map_rejects_another_loss(tmp_path: Path) -> None:
    root = make_camvid(tmp_path, {"val": 1})
    with pytest.raises(SystemExit):
        bal_map_main([f"dataset.root={root}", "loss=ce", "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()
