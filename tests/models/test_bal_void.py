"""BAL on labels with void (Yu, PAC + BAL paper, Sec. 3.2 Eqs. 1-4): edges that Eq. 1 puts on void pixels are
blurred like any other edge, and only the loss is masked there.

VOC outlines every object with a band of void. Eq. 1 on the one-hot label (void in no class) puts a class's edge
on the lower/right pixel of each boundary: on the object's own top row and left column, but on the void row
below it and the void column right of it. Those void edges must still spread to the object, or its bottom and
right sides lose most of their weight.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segexp.models.losses.boundary_aware import BoundaryAwareLoss, blur_kernel

V = 255  # void

# The paper's Table 1 settings: (kernel, down, size, sigma, beta); sigma is unused by the linear kernel.
TABLE1 = [
    ("linear", 1, 15, 1.0, 0.3),
    ("linear", 2, 15, 1.0, 0.3),
    ("linear", 2, 15, 1.0, 0.5),
    ("linear", 4, 15, 1.0, 0.5),
    ("linear", 4, 25, 1.0, 0.5),
    ("linear", 4, 35, 1.0, 0.5),
    ("gaussian", 1, 15, 1.0, 0.3),
    ("gaussian", 2, 15, 1.0, 0.3),
    ("gaussian", 4, 15, 1.0, 0.3),
    ("gaussian", 4, 25, 1.0, 0.3),
    ("gaussian", 4, 35, 1.0, 0.3),
    ("gaussian", 4, 35, 1.0, 0.5),
    ("gaussian", 4, 35, 2.0, 0.5),
    ("gaussian", 4, 35, 3.0, 0.5),
]

# A 32 x 32 object (class 1) at rows/cols 64..95 in a 5-pixel void ring (59..100) on background (class 0), in a
# 160 x 160 label: symmetric under transposition, and under r -> 160 - r (which maps the object's top row 64 to
# the void row 96 below it, and the ring's top void row 59 to the background row 101 below the ring).
SIZE, TOP, SIDE, RING = 160, 64, 32, 5
BOTTOM = TOP + SIDE - 1  # the object's last row / column: 95


def object_in_void_ring() -> torch.Tensor:
    label = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    label[:, TOP - RING : BOTTOM + 1 + RING, TOP - RING : BOTTOM + 1 + RING] = V
    label[:, TOP : BOTTOM + 1, TOP : BOTTOM + 1] = 1
    return label


def sides(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """The object's four border rows / columns of a (H, W) map, each along the object's side."""
    span = slice(TOP, BOTTOM + 1)
    return {"top": weights[TOP, span], "bottom": weights[BOTTOM, span],
            "left": weights[span, TOP], "right": weights[span, BOTTOM]}


def one_pixel_step(weights: torch.Tensor) -> float:
    """The largest change of E_G over the one pixel between the object's bottom row and the void row below it."""
    span = slice(TOP, BOTTOM + 1)
    return float((weights[BOTTOM, span] - weights[BOTTOM + 1, span]).abs().max())


@pytest.mark.parametrize(("kernel", "down", "size", "sigma", "beta"), TABLE1)
def test_the_four_sides_of_an_object_in_a_void_ring_weigh_alike(kernel: str, down: int, size: int, sigma: float,
                                                                 beta: float) -> None:
    """Tolerance: Eq. 1's filter puts each edge on the lower/right pixel of a boundary, so the object's top row
    holds its top edges while its bottom edges lie one pixel outside, on void: the bottom row sees the same edges
    one pixel farther away. The two rows' weights may differ by the change of E_G over that one pixel, read
    from the map at the bottom border (exactly that at down 1, where the blur is shift-equivariant; the
    down/upsampling grids at down 2 and 4 keep it below). Zeroing the void edges before the blur instead
    drops the object's bottom/right edges and the ring's top/left ones: the bottom side weighs 0.20-0.54x the
    top's at down 1 and 1.03-1.13x at down 4 (the background edge below the ring survives), beyond the bound at
    every setting."""
    loss = BoundaryAwareLoss(kernel=kernel, down=down, size=size, sigma=sigma, beta=beta)  # type: ignore[arg-type]
    weights = loss.edge_weights(object_in_void_ring())[0].double()
    side = {name: float(values.mean()) for name, values in sides(weights).items()}
    assert side["left"] == pytest.approx(side["top"], rel=1e-6)  # the label is symmetric under transposition
    assert side["right"] == pytest.approx(side["bottom"], rel=1e-6)
    assert abs(side["top"] - side["bottom"]) <= one_pixel_step(weights) + 1e-6, side
    if down == 1:  # shift-equivariant: the top row weighs what the void row below the object does, away from corners
        middle = slice(TOP + size // 2 + 1, BOTTOM - size // 2)
        torch.testing.assert_close(weights[TOP, middle], weights[BOTTOM + 1, middle], rtol=1e-6, atol=1e-5)


def test_an_error_on_any_side_of_a_void_outlined_object_costs_alike() -> None:
    """Eq. 4 with the paper's best setting: the same mistake (the object's border row or column predicted as
    background, margin 30) on each of the four sides; every other pixel right with margin 30."""
    label = object_in_void_ring()
    loss = BoundaryAwareLoss()  # gaussian, down 4, size 35, sigma 3, beta 0.5
    weights = loss.edge_weights(label)[0].double()
    valid = label[0] != V
    labelled = int(valid.sum())
    truth = (label == 1).long()  # void pixels get class 0's logit; they carry no loss
    ce_right, ce_wrong = math.log1p(math.exp(-30.0)), 30.0 + math.log1p(math.exp(-30.0))  # -log softmax, 2 classes
    costs = {}
    for name, index in {"top": (TOP, slice(TOP, BOTTOM + 1)), "bottom": (BOTTOM, slice(TOP, BOTTOM + 1)),
                        "left": (slice(TOP, BOTTOM + 1), TOP), "right": (slice(TOP, BOTTOM + 1), BOTTOM)}.items():
        predicted = truth.clone()
        predicted[(0, *index)] = 0
        logits = 30.0 * F.one_hot(predicted, 2).permute(0, 3, 1, 2).float()
        costs[name] = float(loss(logits, label))
        on_side = float(weights[index].sum())
        expected = (ce_wrong * on_side + ce_right * (float(weights[valid].sum()) - on_side)) / labelled
        assert costs[name] == pytest.approx(expected, rel=1e-5), name
    assert costs["left"] == pytest.approx(costs["top"], rel=1e-6)
    assert costs["right"] == pytest.approx(costs["bottom"], rel=1e-6)
    # the per-side difference may be the one-pixel change of E_G (see the test above), here 1.4% of the top's
    assert abs(costs["top"] - costs["bottom"]) <= 30.0 * SIDE * one_pixel_step(weights) / labelled
    assert costs["bottom"] / costs["top"] == pytest.approx(1.0, abs=0.02)


# --------------------------------------------------------------------------------------------------------
# The fast form against Eqs. 1-4 computed directly, on a label with void
# --------------------------------------------------------------------------------------------------------

# Classes 0-3; void bands (V) around the objects, a void pixel inside one and void on the image border.
LABEL = torch.tensor([
    [V, V, V, V, V, V, V, V, V, V, V, V],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, V, V, V, V, 0, 0, 0, 0, 0, 0],
    [0, 0, V, 1, 1, V, 0, 0, V, V, V, 0],
    [0, 0, V, 1, 1, V, 0, 0, V, 2, V, 0],
    [0, 0, V, 1, V, V, 0, 0, V, 2, V, 0],
    [0, 0, V, V, V, 0, 0, 0, V, 2, V, 0],
    [0, 0, 0, 0, 0, 0, 0, V, V, 3, V, 0],
    [0, 0, 0, 0, 0, 0, V, 3, 3, 3, V, 0],
    [0, 0, 0, 0, 0, 0, V, V, V, V, V, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, V],
    [2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, V],
    [2, 2, 2, V, 0, 0, 0, 0, 0, 0, 0, V],
    [2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 1, 1],
])
CLASSES = 4


def eq1_by_loops(label: torch.Tensor) -> torch.Tensor:
    """Eq. 1-2 pixel by pixel: E_i(y, x) = [ |l_i(y, x) - 0.5 l_i(y, x-1) - 0.5 l_i(y-1, x)| > 0 ] (the convolution
    with f_E), l_i the one-hot label with void in no class, the image edge replicated. (classes, H, W) float64."""
    h, w = label.shape
    edges = torch.zeros(CLASSES, h, w, dtype=torch.float64)
    for i in range(CLASSES):
        for y in range(h):
            for x in range(w):
                own = float(label[y, x] == i)
                left = float(label[y, max(x - 1, 0)] == i)
                up = float(label[max(y - 1, 0), x] == i)
                edges[i, y, x] = float(abs(own - 0.5 * left - 0.5 * up) > 0)
    return edges


def eq3_directly(edges: torch.Tensor, kernel: torch.Tensor, down: int, beta: float) -> torch.Tensor:
    """Eq. 3 class by class with Sec. 4.1's resampling: sum_i up(f * down(E_i)) + beta. At down 1 the blur is
    summed by loops (zero outside the image); otherwise each class map is resampled on its own."""
    k = kernel.double()
    r = k.shape[0] // 2
    h, w = edges.shape[-2:]
    total = torch.zeros(h, w, dtype=torch.float64)
    for e in edges:
        if down == 1:
            for y in range(h):
                for x in range(w):
                    total[y, x] += sum(float(k[j, i] * e[y + j - r, x + i - r])
                                       for j in range(k.shape[0]) for i in range(k.shape[1])
                                       if 0 <= y + j - r < h and 0 <= x + i - r < w)
        else:
            small = F.interpolate(e[None, None], size=(math.ceil(h / down), math.ceil(w / down)), mode="bilinear",
                                  align_corners=False, antialias=True)
            blurred = F.conv2d(small, k[None, None], padding=r)
            total += F.interpolate(blurred, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return total + beta


def test_eq1_puts_class_edges_on_the_void_pixels_below_and_right_of_a_class() -> None:
    edges = eq1_by_loops(LABEL)
    assert edges[1, 5, 4] == 1 and edges[1, 5, 5] == 0  # void right of the object's (5, 3), not diagonal
    assert edges[1, 6, 3] == 1 and edges[1, 4, 5] == 1  # void below (5, 3) and right of (4, 4)
    assert edges[0, 2, 2] == 1 and edges[2, 12, 3] == 1  # void below background, right of class 2
    assert edges[:, 0].sum() == 0  # the void first row: its replicated upper neighbour is void too


@pytest.mark.parametrize(("kernel", "down", "size", "sigma"), [("linear", 1, 5, 1.0), ("gaussian", 1, 3, 2.0),
                                                                ("gaussian", 2, 5, 3.0), ("linear", 4, 3, 1.0)])
def test_fast_form_equals_eqs_1_to_4_on_a_label_with_void(kernel: str, down: int, size: int, sigma: float) -> None:
    beta = 0.5
    loss = BoundaryAwareLoss(kernel=kernel, down=down, size=size, sigma=sigma, beta=beta)  # type: ignore[arg-type]
    expected = eq3_directly(eq1_by_loops(LABEL), blur_kernel(kernel, size, sigma), down, beta)
    weights = loss.edge_weights(LABEL[None])[0]
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-5)
    # Eq. 4: the mean over the labelled pixels of E_G x cross-entropy
    torch.manual_seed(0)
    logits = torch.randn(1, CLASSES, *LABEL.shape)
    log_p = torch.log_softmax(logits.double(), dim=1)[0]
    labelled = [(y, x) for y in range(LABEL.shape[0]) for x in range(LABEL.shape[1]) if LABEL[y, x] != V]
    bal = sum(float(expected[y, x] * -log_p[LABEL[y, x], y, x]) for y, x in labelled) / len(labelled)
    assert float(loss(logits, LABEL[None])) == pytest.approx(bal, rel=1e-5)
