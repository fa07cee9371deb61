"""Convolutional blocks shared by ConvNet, ResNet, MobileNet, EfficientNet (and detection/segmentation)."""

from __future__ import annotations

import torch
from torch import nn

from neuratlas.layers.activations import get_activation


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channel counts to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose grouped (depthwise) form runs in fp32 inside CPU autocast when ``cpu_fp32`` is set.

    oneDNN's bf16 depthwise backward is 3–14× slower than its fp32 one on AMX Xeons (a strided 5×5
    depthwise layer of EfficientNet: 144 vs 10 ms), so a bf16-autocast EfficientNet step was 2.2× slower
    than fp32. Keeping only these convolutions in fp32 makes the bf16 step faster than fp32 again, while the
    pointwise (1×1) convolutions keep AMX. Same parameters and state dict as ``nn.Conv2d``.
    """

    cpu_fp32 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_fp32 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def set_depthwise_fp32(model: nn.Module, on: bool = True) -> int:
    """Switch every grouped :class:`Conv2d` of ``model`` to fp32 under CPU autocast (or back); returns how many."""
    convs = [m for m in model.modules() if isinstance(m, Conv2d) and m.groups > 1]
    for m in convs:
        m.cpu_fp32 = on
    return len(convs)


class Conv2dSame(Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: the extra pixel of an even total pad goes right/bottom.

    For stride 1 this equals symmetric padding; for stride 2 on an even input TF pads (0, 1) where
    PyTorch's ``padding=k//2`` pads (1, 1), which shifts every feature map by one pixel. Weights trained in
    TensorFlow (EfficientNet-Lite) need this to reproduce their outputs.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)  # (W then H) as F.pad wants
            pads += [total // 2, total - total // 2]
        return super().forward(nn.functional.pad(x, pads))


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm -> activation; ``groups=in_ch`` makes it depthwise.

    ``tf_same=True`` pads like TensorFlow's "SAME" (see :class:`Conv2dSame`); the default is symmetric.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        tf_same: bool = False,
    ) -> None:
        conv = (
            Conv2dSame(in_ch, out_ch, kernel_size, stride, groups=groups)
            if tf_same
            else Conv2d(in_ch, out_ch, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        )
        layers: list[nn.Module] = [
            conv,
            nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum),
        ]
        if act:
            layers.append(get_activation(act, inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> bottleneck FC -> sigmoid gate (Hu et al. 2018)."""

    def __init__(self, channels: int, squeeze_channels: int, act: str = "silu") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = get_activation(act, inplace=True)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_conv_weights(module: nn.Module, act: str = "relu") -> None:
    """Kaiming-normal (fan_out) for convs, N(0, 0.01) for linears, BN gamma=1/beta=0 (He et al. 2015)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
