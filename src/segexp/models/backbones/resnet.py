"""Dilated (atrous) ResNet backbone for dense prediction, with DeepLabv3's cascaded blocks and multi-grid.

What it computes: the convolutional trunk of an ImageNet ResNet-18/34/50/101/152 (torchvision layout and
parameter names, "ResNet v1.5": a Bottleneck strides on its 3x3 conv; no avgpool, no fc), returning the
feature map of every stage. Following Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation" (DeepLabv3):

* Sec. 3.1 -- output stride, by the hole algorithm: the stem (7x7/2 conv + 3x3/2 max pool) gives stride 4;
  layer2, layer3, layer4 (and every extra block) halve the resolution nominally. Once the running stride
  reaches the requested ``output_stride``, a later stage keeps stride 1 ("skip the down-sampling") and the
  running atrous rate is multiplied by the stride it dropped, for the convolutions that *follow* that
  stride only (FCRN Sec. 3.1 "increase the dilations of subsequent kernels"; TF-slim
  ``resnet_utils.stack_blocks_dense``; torchvision ``_make_layer``'s ``previous_dilation``; mmseg's
  ``contract_dilation``). So a de-strided stage has two rates: its *entry rate* (the rate in force before it,
  that of the grid it reads) for the conv that held the stride -- the first unit's 3x3 conv (Bottleneck
  ``conv2``, BasicBlock ``conv1``) -- and its *stage rate* (twice the entry rate) for every later conv of the
  stage (BasicBlock's ``conv2`` of the first unit included). E.g. OS 16: layer4 = (1, 2, 2); OS 8: layer3 =
  (1, 2, 2, ...) and layer4 = (2, 4, 4). A stage that keeps its stride has entry rate = stage rate. The
  first unit's shortcut (a 1x1 conv, or the subsampled identity of an extra block) takes the stage stride.
  3x3 convs are padded by their dilation, so a stage keeps the spatial size, and the final feature map of an
  HxW input is ceil(H / OS) x ceil(W / OS).

  Consequence (tested in ``tests/models/test_hole_algorithm.py``): the same weights at OS s/2 compute the OS-s
  network densely, ``features(OS s/2)[..., ::2, ::2] == features(OS s)`` exactly (up to float rounding) at
  every stage past the removed stride, for any input size; at OS 16 or 8 the trunk computes the ImageNet
  network's features (at OS 32) on a denser grid.
* Sec. 3.2 -- going deeper: ``extra_blocks`` (0..3) appends ``layer5..layer7`` = block5..block7, replicas
  of layer4 (same units and widths, randomly initialised), each nominally striding by 2, so the nominal
  output stride with k extra blocks is 32 * 2**k (256 with block7, Table 1). Their input has layer4's depth,
  so their first unit's shortcut is the identity, subsampled when it strides (TF-slim's bottleneck projects
  only when the depth changes); torchvision's rule (project whenever a unit strides) would add a 1x1 conv
  2048 -> 2048 + BN, 4.2M parameters, to each extra block of ResNet-50/101.
* Sec. 3.2.1 -- multi-grid: ``multi_grid = (r1, r2, ...)`` are unit rates for the units of layer4 and of
  every extra block: unit i's 3x3 convs get dilation ``rate * multi_grid[i]``, where ``rate`` is the rate of
  the grid the conv reads, i.e. the stage rate, except for the first unit's formerly strided conv, which
  reads at the entry rate and gets ``entry_rate * multi_grid[0]``. Multi-grid is thus a per-unit factor on
  top of the hole algorithm, and OS s/2 remains the dense version of OS s for *any* multi-grid (also with
  ``multi_grid[0] != 1``, e.g. (2, 2, 2)): every conv's dilation is one fixed factor times the density of
  its input grid. With ``multi_grid[0] == 1`` (the papers' (1, 2, 4), (1, 2, 1), (1, 1, 1), ...) the
  formerly strided conv is at exactly the entry rate. OS 16 and MG (1, 2, 4) give layer4 dilations
  (1, 4, 8); OS 8 gives (2, 8, 16). This is the torchvision layout (the stride sits in the first unit of
  layer4); DeepLabv3's TF layout strides in the last unit of block3, so all three of its block4 units
  follow the stride and the paper's "2 * (1, 2, 4) = (2, 4, 8)" applies to them. mmseg's ``multi_grid``
  differs again: absolute dilations for layer4's units (``first_dilation = multi_grid[0]``), ignoring the
  stage dilation.
* Sec. 4.1 -- training at OS 16 and evaluating/fine-tuning at OS 8 with the same weights:
  ``ResNet.set_output_stride`` rewrites strides, dilations and paddings of the existing convs in place; by
  the hole algorithm the OS-8 trunk is then the OS-16 trunk evaluated densely (same function, 4x the
  positions).
  ``frozen_bn=True`` replaces every BN by ``FrozenBatchNorm2d`` (FCRN; DeepLabv3's second stage).

Note on receptive fields: the hole algorithm keeps the field of view of the strided network, e.g. ResNet-18
covers 435 px at OS 32, 16 and 8 alike (``tests/models/test_resnet.py``); multi-grid enlarges it (MG (1, 2): 563 px
at any output stride).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

from torch import Tensor, nn

from segexp.models.backbones.frozen_bn import freeze_batchnorm
from segexp.models.backbones.pretrained import key_summary, read_state_dict
from segexp.models.backbones.residual_dropout import ResidualDropout
from segexp.models.backbones.unit_names import resolve_unit

# ImageNet weights in torchvision format (IMAGENET1K_V1). When online, download with
# ``torch.hub.load_state_dict_from_url(url)`` (or save that dict with ``torch.save``) to a file and pass its
# path as ``ResNet(pretrained=path)``. Nothing in this module downloads.
TORCHVISION_URLS: dict[int, str] = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    152: "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}

STEM_STRIDE = 4
STAGE_WIDTHS = (64, 128, 256, 512)
MAX_EXTRA_BLOCKS = 3


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Subsample(nn.Module):
    """The shortcut of a unit whose depth does not change: the identity, keeping every ``stride``-th row and
    column when the unit strides (TF-slim ``resnet_utils.subsample``: a 1x1 max pool with that stride). It takes
    the positions a 3x3 conv of the same stride and padding 1 centres on, so the sum with the branch lines up."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = (stride, stride)

    def forward(self, x: Tensor) -> Tensor:
        step_y, step_x = self.stride
        return x if (step_y, step_x) == (1, 1) else x[..., ::step_y, ::step_x]

    def extra_repr(self) -> str:
        return f"stride={self.stride[0]}"


Shortcut = nn.Sequential | Subsample
"""A unit's shortcut when it is not the plain identity: 1x1 conv + BN (the depth changes) or :class:`Subsample`."""


def _set_shortcut_stride(shortcut: Shortcut | None, stride: int) -> None:
    if isinstance(shortcut, Subsample):
        shortcut.stride = (stride, stride)
    elif shortcut is not None:
        _set_conv_geometry(shortcut[0], stride, 1)


def _set_conv_geometry(conv: nn.Conv2d, stride: int, dilation: int) -> None:
    """Set stride/dilation of an existing conv in place; odd kernels get 'same' padding dilation*(k-1)//2."""
    conv.stride = (stride, stride)
    conv.dilation = (dilation, dilation)
    pad = dilation * (conv.kernel_size[0] - 1) // 2
    conv.padding = (pad, pad)


class BasicBlock(nn.Module):
    """ResNet-18/34 unit: two 3x3 convs (the first strides), identity or 1x1-conv shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Shortcut | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def set_geometry(self, stride: int, dilation: int, entry_dilation: int | None = None) -> None:
        """Stride on conv1 (and the shortcut); conv1, the conv that holds (or held) the stride, gets
        ``entry_dilation`` (default ``dilation``), conv2, which follows it, gets ``dilation``."""
        _set_conv_geometry(self.conv1, stride, dilation if entry_dilation is None else entry_dilation)
        _set_conv_geometry(self.conv2, 1, dilation)
        _set_shortcut_stride(self.downsample, stride)

    def dilations(self) -> tuple[int, ...]:
        return (self.conv1.dilation[0], self.conv2.dilation[0])

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch, before it is added to the shortcut."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet-50+ unit: 1x1 reduce, 3x3 (strides: "v1.5"), 1x1 expand (x4), identity or 1x1-conv shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Shortcut | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def set_geometry(self, stride: int, dilation: int, entry_dilation: int | None = None) -> None:
        """Stride on the 3x3 conv, which holds (or held) the stride and so gets ``entry_dilation`` (default
        ``dilation``; the unit has no later 3x3 conv); the shortcut conv gets the stride."""
        _set_conv_geometry(self.conv2, stride, dilation if entry_dilation is None else entry_dilation)
        _set_shortcut_stride(self.downsample, stride)

    def dilations(self) -> tuple[int, ...]:
        return (self.conv2.dilation[0],)

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch, before it is added to the shortcut."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


Block = type[BasicBlock] | type[Bottleneck]

ARCHITECTURES: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _make_stage(block: Block, inplanes: int, planes: int, units: int, stride: int) -> nn.Sequential:
    """torchvision's ``_make_layer``: the first unit strides. Its shortcut is a 1x1 conv + BN where the depth
    changes (every stage of the ImageNet trunk), else the identity, subsampled when the unit strides (the extra
    blocks 5-7, whose input is already layer4's depth): TF-slim's bottleneck, which DeepLabv3 Sec. 3.2 duplicates,
    projects only when the depth changes, whereas torchvision also projects whenever a unit strides."""
    downsample: Shortcut | None = None
    if inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            _conv1x1(inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
        )
    elif stride != 1:
        downsample = Subsample(stride)
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(units - 1)]
    return nn.Sequential(*layers)


class StagePlan(NamedTuple):
    """Geometry of one stage: ``stride`` of its first unit; ``entry_rate``, the atrous rate in force before the
    stage (of the grid it reads), for the first unit's 3x3 conv that holds or held the stride; ``rate``, the
    stage rate, for every later conv of the stage (``rate == 2 * entry_rate`` where the stride was removed,
    ``rate == entry_rate`` otherwise)."""

    stride: int
    entry_rate: int
    rate: int


def _stage_plan(output_stride: int, num_stages: int) -> list[StagePlan]:
    """Per stage, the hole algorithm (Sec. 3.1): stride while below ``output_stride``, then drop the stride and
    multiply the rate of the convolutions that follow it."""
    plan = []
    running_stride, rate = STEM_STRIDE, 1
    for index in range(num_stages):
        nominal = 1 if index == 0 else 2
        if running_stride >= output_stride:
            plan.append(StagePlan(1, rate, rate * nominal))
            rate *= nominal
        else:
            running_stride *= nominal
            plan.append(StagePlan(nominal, rate, rate))
    return plan


class ResNet(nn.Module):
    """Dilated ResNet trunk; ``forward`` returns {"layer1", ..., "layerN", "out"} feature maps.

    Attributes: ``feature_channels`` (channels of each feature name ``forward`` returns), ``out_channels``
    (channels of the last stage), ``aux_channels`` (channels of layer3), ``output_stride`` (current),
    ``stage_names`` ("layer1".. "layer{4+extra_blocks}"), ``multi_grid``; :meth:`feature_strides`.
    """

    def __init__(
        self,
        depth: int = 50,
        output_stride: int = 16,
        multi_grid: list[int] | None = None,
        extra_blocks: int = 0,
        pretrained: str | None = None,
        frozen_bn: bool = False,
        in_channels: int = 3,
        unit_wrappers: Mapping[str, Callable[..., nn.Module]] | None = None,
        dropout_units: Sequence[str] = (),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        if not 0 <= extra_blocks <= MAX_EXTRA_BLOCKS:
            raise ValueError(f"extra_blocks must be in 0..{MAX_EXTRA_BLOCKS}, got {extra_blocks}")
        block, units = ARCHITECTURES[depth]
        self.depth = depth
        self.extra_blocks = extra_blocks
        self.multi_grid = _check_multi_grid(multi_grid, units[3])
        self.frozen_bn = frozen_bn

        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage_names = self._build_stages(block, units)
        self.units_per_stage = tuple(len(getattr(self, name)) for name in self.stage_names)
        self.out_channels = STAGE_WIDTHS[3] * block.expansion
        self.aux_channels = STAGE_WIDTHS[2] * block.expansion
        widths = [*STAGE_WIDTHS, *[STAGE_WIDTHS[3]] * extra_blocks]
        self.feature_channels: dict[str, int] = {
            **{name: width * block.expansion for name, width in zip(self.stage_names, widths)},
            "out": self.out_channels,
        }
        self.output_stride = 0
        self.set_output_stride(output_stride)
        _init_weights(self)

        if pretrained is not None:
            load_pretrained(self, pretrained)
        if frozen_bn:
            freeze_batchnorm(self)
        for name, make_wrapper in (unit_wrappers or {}).items():
            self.wrap_unit(name, make_wrapper)
        for name in dropout_units:  # FCRN Sec. 4.5: dropout in some of the top-most residual units
            try:
                self.wrap_unit(name, partial(ResidualDropout, p=dropout))
            except ValueError as err:
                raise ValueError(f"backbone.dropout_units: {err}") from err

    def unit(self, name: str) -> nn.Module:
        """The residual unit (or its wrapper) called ``name`` in either naming (:mod:`.unit_names`)."""
        stage, index = resolve_unit(name, self.depth, self.units_per_stage)
        return getattr(self, f"layer{stage}")[index]

    def wrap_unit(self, name: str, make_wrapper: Callable[..., nn.Module]) -> nn.Module:
        """Replace unit ``name`` by ``make_wrapper(unit=<the unit>)``, e.g. a pyramid residual block or dropout
        in its branch (``backbone.unit_wrappers: {res5c: {_target_: ..., _partial_: true}}``).

        The wrapper keeps the unit as its ``unit`` attribute: the output stride keeps reaching the unit's
        convolutions through it. Wrapping happens after the ImageNet weights are loaded, so a wrapper's own
        parameters start from its own initialisation.
        """
        stage, index = resolve_unit(name, self.depth, self.units_per_stage)
        layer: nn.Sequential = getattr(self, f"layer{stage}")
        if not callable(make_wrapper) or isinstance(make_wrapper, nn.Module):
            raise ValueError(f"backbone.unit_wrappers.{name}: expected a wrapper factory (a config with "
                             f"_target_ and _partial_: true), got {type(make_wrapper).__name__}")
        wrapper = make_wrapper(unit=layer[index])
        if getattr(wrapper, "unit", None) is not layer[index]:
            raise ValueError(f"backbone.unit_wrappers.{name}: {type(wrapper).__name__} must keep the wrapped unit "
                             "as its `unit` attribute (so the output stride can still be changed)")
        layer[index] = wrapper
        return wrapper

    def _build_stages(self, block: Block, units: tuple[int, int, int, int]) -> list[str]:
        names = []
        inplanes = 64
        widths = list(STAGE_WIDTHS) + [STAGE_WIDTHS[3]] * self.extra_blocks
        counts = list(units) + [units[3]] * self.extra_blocks
        for index, (planes, count) in enumerate(zip(widths, counts)):
            name = f"layer{index + 1}"
            stride = 1 if index == 0 else 2
            self.add_module(name, _make_stage(block, inplanes, planes, count, stride))
            inplanes = planes * block.expansion
            names.append(name)
        return names

    @property
    def nominal_output_stride(self) -> int:
        """Output stride without any atrous convolution: 32 * 2**extra_blocks."""
        return 32 * 2**self.extra_blocks

    def set_output_stride(self, output_stride: int) -> None:
        """Re-configure strides, dilations and paddings in place (weights untouched), Sec. 3.1 / 3.2.1: in each
        stage the first unit's strided (or formerly strided) 3x3 conv gets ``entry_rate * mg[0]``, every later
        3x3 conv of unit i ``rate * mg[i]`` (mg: ``multi_grid`` in layer4 and the extra blocks, else all 1)."""
        nominal = self.nominal_output_stride
        valid = output_stride >= STEM_STRIDE and output_stride <= nominal
        if not valid or output_stride & (output_stride - 1):
            raise ValueError(
                f"output_stride must be a power of two between {STEM_STRIDE} and {nominal} "
                f"(for {self.extra_blocks} extra blocks), got {output_stride}"
            )
        plan = _stage_plan(output_stride, len(self.stage_names))
        for index, (name, step) in enumerate(zip(self.stage_names, plan)):
            stage: nn.Sequential = getattr(self, name)
            unit_rates = self.multi_grid if index >= 3 else (1,) * len(stage)
            for unit_index, unit in enumerate(stage):
                inner = unwrapped(unit)
                grid = unit_rates[unit_index]
                if unit_index == 0:
                    inner.set_geometry(step.stride, step.rate * grid, entry_dilation=step.entry_rate * grid)
                else:
                    inner.set_geometry(1, step.rate * grid)
        self.output_stride = output_stride

    @contextmanager
    def dense_last_stride(self, offset: tuple[int, int]) -> Iterator[None]:
        """One shifted pass of FCRN Sec. 3.2: inside the block, the layers holding the last stride (the first
        unit's strided 3x3 conv and its shortcut conv or subsampling) run with stride 1 and keep every second row and
        column of their output from ``offset`` = (dy, dx) in {0, 1}^2.

        The paper shifts the feature map in front of that layer by one pixel and strides; striding a shifted
        map keeps the same values as evaluating the layer densely and subsampling from the offset, and the
        latter also gets the border right (zero padding where the dense layer has it). The four offsets'
        outputs interleave into the output of the same weights at half the output stride, i.e. after
        ``set_output_stride(output_stride // 2)`` (the hole algorithm: the strided conv's own dilation
        unchanged, every later one doubled). Raises ValueError when no stage after the stem strides (output
        stride 4)."""
        unit = getattr(self, self.last_strided_stage())[0]
        strided = [m for m in unit.modules() if isinstance(m, (nn.Conv2d, Subsample)) and m.stride == (2, 2)]
        dy, dx = offset
        handles = [conv.register_forward_hook(lambda module, args, out: out[..., dy::2, dx::2]) for conv in strided]
        for conv in strided:
            conv.stride = (1, 1)
        try:
            yield
        finally:
            for conv, handle in zip(strided, handles):
                conv.stride = (2, 2)
                handle.remove()

    def last_strided_stage(self) -> str:
        """The last stage whose first unit strides at the current output stride."""
        plan = _stage_plan(self.output_stride, len(self.stage_names))
        strided = [name for name, step in zip(self.stage_names, plan) if step.stride == 2]
        if not strided:
            raise ValueError(f"ResNet at output stride {self.output_stride} has no strided stage after the stem: "
                             "shifted passes cannot simulate half of it")
        return strided[-1]

    def feature_strides(self) -> dict[str, int]:
        """Stride (input pixels per feature pixel) of each feature name at the current output stride."""
        strides, stride = {}, STEM_STRIDE
        for name, step in zip(self.stage_names, _stage_plan(self.output_stride, len(self.stage_names))):
            stride *= step.stride
            strides[name] = stride
        return {**strides, "out": strides[self.stage_names[-1]]}

    def stage_dilations(self, name: str) -> list[tuple[int, ...]]:
        """Dilations of the 3x3 convs of each unit in stage ``name`` (for inspection and tests)."""
        return [unwrapped(unit).dilations() for unit in getattr(self, name)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features: dict[str, Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features[name] = x
        features["out"] = x
        return features


def unwrapped(unit: nn.Module) -> nn.Module:
    """The residual unit itself: ``unit``, or the one a wrapper holds as its ``unit`` (:meth:`ResNet.wrap_unit`
    checks that every wrapper does)."""
    return getattr(unit, "unit", unit)


def _check_multi_grid(multi_grid: Sequence[int] | None, expected_length: int) -> tuple[int, ...]:
    if multi_grid is None:
        return (1,) * expected_length
    values = tuple(multi_grid)
    if len(values) != expected_length:
        raise ValueError(
            f"multi_grid={list(values)} has length {len(values)}, expected {expected_length} "
            "(one unit rate per unit of layer4)"
        )
    if any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"multi_grid={list(values)} must hold positive integers")
    return tuple(int(v) for v in values)


def _init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convs, BN weight 1 / bias 0 -- torchvision's init; pretrained weights override."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _is_extra_layer_key(key: str) -> bool:
    stage = key.split(".", 1)[0]
    return stage.startswith("layer") and stage[5:].isdigit() and int(stage[5:]) >= 5


def load_pretrained(model: ResNet, path: str | os.PathLike[str]) -> None:
    """Load a torchvision-format ImageNet ResNet state dict from ``path`` into ``model`` (strictly checked).

    ``fc.*`` keys are dropped. Every other checkpoint key must exist in the model with the same shape, and
    every model key must be in the checkpoint, except the randomly initialised extra blocks (layer5+) and
    ``num_batches_tracked`` counters (absent from old torchvision files; absent from frozen BN). Raises
    FileNotFoundError for a missing file and ValueError naming the offending keys and the file otherwise.
    """
    where = os.fspath(path)
    checkpoint = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    own = model.state_dict()
    unexpected = [k for k in checkpoint if k not in own and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise ValueError(f"unexpected keys in pretrained weights {where}: {key_summary(unexpected)}")
    for key, value in checkpoint.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"shape mismatch for {key} in pretrained weights {where}: checkpoint "
                f"{tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
    missing = [
        k for k in own if k not in checkpoint and not _is_extra_layer_key(k) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise ValueError(f"pretrained weights {where} lack keys: {key_summary(missing)}")
    model.load_state_dict({k: v for k, v in checkpoint.items() if k in own}, strict=False)
