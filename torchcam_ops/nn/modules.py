"""Modules that run the TSGB and rectified-ReLU ops with the parameters and buffers of the layers
they stand in for (the same tensor objects: no copies, the same state_dict keys)."""

from __future__ import annotations

from torch import Tensor, nn

from torchcam_ops import ops


def _share(target: nn.Module, source: nn.Module, parameters: tuple[str, ...], buffers: tuple[str, ...] = ()) -> None:
    for name in parameters:
        value = getattr(source, name)
        if value is None:
            target.register_parameter(name, None)
        else:
            setattr(target, name, value)  # the same Parameter object
    for name in buffers:
        target.register_buffer(name, getattr(source, name))


class TSGBConv2d(nn.Module):
    """``nn.Conv2d`` forward, TSGB-Conv backward to the input (see :func:`torchcam_ops.ops.tsgb_conv2d`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str) and conv.padding != "valid":
            raise ValueError(
                f"TSGBConv2d: padding={conv.padding!r}, padding_mode={conv.padding_mode!r} is not "
                "supported (explicit zero padding only)"
            )
        _share(self, conv, ("weight", "bias"))
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding = (0, 0) if conv.padding == "valid" else conv.padding
        self.training = conv.training

    def forward(self, x: Tensor) -> Tensor:
        return ops.tsgb_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class TSGBLinear(nn.Module):
    """``nn.Linear`` forward, TSGB-FC backward to the input (see :func:`torchcam_ops.ops.tsgb_linear`)."""

    def __init__(self, linear: nn.Linear, beta: float = 1.0) -> None:
        super().__init__()
        _share(self, linear, ("weight", "bias"))
        self.beta = beta
        self.training = linear.training

    def forward(self, x: Tensor) -> Tensor:
        return ops.tsgb_linear(x, self.weight, self.bias, self.beta)


class TSGBBatchNorm2d(nn.Module):
    """Inference ``nn.BatchNorm2d`` forward; the backward passes relevance unchanged. Needs running
    statistics and eval mode: TSGB explains a trained network, not a training step."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("TSGBBatchNorm2d: the BatchNorm2d has no running statistics (track_running_stats=False)")
        buffers = ("running_mean", "running_var") + (
            ("num_batches_tracked",) if bn.num_batches_tracked is not None else ()
        )
        _share(self, bn, ("weight", "bias"), buffers)
        self.eps = bn.eps
        self.training = bn.training

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError(
                "TSGBBatchNorm2d: the BatchNorm2d is in training mode; TSGB uses running statistics, "
                "call model.eval() before explaining"
            )
        return ops.tsgb_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)


class TSGBAvgPool2d(nn.Module):
    """``nn.AvgPool2d`` forward; the backward shares each window's relevance equally over its input
    positions (none to the padding)."""

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        if pool.ceil_mode or not pool.count_include_pad or pool.divisor_override is not None:
            raise ValueError("TSGBAvgPool2d: ceil_mode, count_include_pad=False and divisor_override are not supported")
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding
        self.training = pool.training

    def forward(self, x: Tensor) -> Tensor:
        return ops.tsgb_avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class RectifiedReLU(nn.Module):
    """ReLU forward with a rectified backward: ``guided``, ``deconvnet`` or ``plain``."""

    def __init__(self, mode: str = "guided") -> None:
        super().__init__()
        if mode not in ops.RELU_MODES:
            raise ValueError(f"RectifiedReLU: unknown mode {mode!r}; expected one of {ops.RELU_MODES}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return ops.rectified_relu(x, self.mode)
