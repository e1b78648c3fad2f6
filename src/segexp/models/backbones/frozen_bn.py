"""Frozen batch normalisation: BN with fixed statistics and fixed affine parameters.

``FrozenBatchNorm2d`` computes ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with all
four tensors stored as buffers, so nothing in it is trained and its output does not depend on the batch or
on ``train()``/``eval()``. This is the "BN statistics frozen" setting of FCRN (Wu et al.) and of the second
training stage of DeepLabv3 (Chen et al., Sec. 4.1: "we then freeze batch normalization parameters, employ
output_stride=8").

The class deliberately does not subclass torch's ``_BatchNorm``: ``nn.SyncBatchNorm.convert_sync_batchnorm``
(used by Lightning's ``sync_batchnorm=True``) only converts ``_BatchNorm`` instances, so frozen layers stay
frozen. Its state-dict keys are ``weight``, ``bias``, ``running_mean`` and ``running_var`` (the same as
``nn.BatchNorm2d``), and a ``num_batches_tracked`` key is silently dropped on load, so a checkpoint written
by a model with ordinary BN loads into a frozen one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

_CONVERTIBLE = (nn.BatchNorm2d, nn.SyncBatchNorm)


class FrozenBatchNorm2d(nn.Module):
    """Per-channel affine map ``x * scale + shift`` built from fixed BN statistics (buffers, no parameters)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn``: same eps, affine parameters and running statistics (device/dtype kept).

        A BN without affine parameters gets weight 1 / bias 0; one without running statistics gets mean 0 /
        var 1 (it normalised with batch statistics only, so there is nothing better to freeze).
        """
        frozen = cls(bn.num_features, eps=bn.eps)
        reference = bn.weight if bn.weight is not None else bn.running_mean
        if reference is not None:
            frozen = frozen.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight.detach())
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias.detach())
            if bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
            if bn.running_var is not None:
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` (and ``nn.SyncBatchNorm``) in ``module``'s tree by a FrozenBatchNorm2d.

    Children are replaced in place; the (possibly new) root is returned, so pass a bare BN and use the
    return value. Weights, biases, running statistics and eps are copied.
    """
    if isinstance(module, _CONVERTIBLE):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        replaced = freeze_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
