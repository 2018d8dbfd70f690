"""Rectified ReLU and the TSGB layers (docs/design.md): each forward is the ordinary layer, each
backward to the input a relevance rule implemented as an op of its own; with their fake kernels.

Argument checks: in eager code the C++ checks are the only ones (the wrappers check only that tensors
are tensors and normalise ``int | pair`` arguments); the fake kernels compute the output shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchcam_ops.ops._registration import ops, register_fake, require_tensor, require_tensors

__all__ = [
    "RELU_MODES",
    "rectified_relu",
    "tsgb_avg_pool2d",
    "tsgb_batch_norm",
    "tsgb_conv2d",
    "tsgb_linear",
    "tsgb_pass_through",
]

RELU_MODES: tuple[str, ...] = ("guided", "deconvnet", "plain")


def int_pair(name: str, value: int | Sequence[int]) -> list[int]:
    # exact-type checks first: this runs for every convolution an explainer routes (an ABC
    # isinstance check costs more than the rest of the call)
    if type(value) is int:
        return [value, value]
    if type(value) in (tuple, list) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return [value[0], value[1]]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def rectified_relu(input: Tensor, mode: str = "guided") -> Tensor:
    r"""ReLU forward with a rectified backward.

    ``guided`` (guided backpropagation): :math:`\partial x = G\,[X > 0]\,[G > 0]`;
    ``deconvnet``: :math:`\partial x = \mathrm{ReLU}(G)`; ``plain``: the ordinary :math:`G\,[X > 0]`.

    Args:
        input: the tensor X, of any shape, float32, float64, float16 or bfloat16.
        mode: the backward rule, one of :data:`RELU_MODES`: ``"guided"`` (default), ``"deconvnet"`` or ``"plain"``.

    Returns:
        ``ReLU(input)``, of the shape and dtype of ``input``.

    Raises:
        TypeError: ``input`` is not a tensor or not floating point.
        ValueError: ``mode`` is not one of :data:`RELU_MODES`.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensor("rectified_relu", "input", input)
    if mode not in RELU_MODES:
        raise ValueError(f"rectified_relu: unknown mode {mode!r}; expected one of {RELU_MODES}")
    return ops.rectified_relu.default(input, mode)


def tsgb_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None, beta: float = 1.0) -> Tensor:
    r"""``F.linear`` forward; TSGB-FC backward to the input.

    .. math:: W^\pm = \max/\min(W, 0),\ z^\pm = h W^{\pm\top},\ r = z^+ / |z^-|\ (0 \text{ where } z^- = 0),\
              g_h = g W^+ + \beta\,(g \odot r) W^-

    With :math:`\beta = 1`, :math:`\sum h\,g_h = 0` for a one-hot g. Weight and bias gradients are the
    ordinary ones.

    Args:
        input: the features h, ``[..., in_features]`` (at least 1-D), float32, float64, float16 or bfloat16.
        weight: the weight W, ``[out_features, in_features]``, of the dtype and device of ``input``.
        bias: an optional bias ``[out_features]``, of the dtype and device of ``input``; None for no bias.
        beta: the weight :math:`\beta` of the negative part in the backward rule, a finite real number
            (default 1.0).

    Returns:
        ``F.linear(input, weight, bias)``, ``[..., out_features]``.

    Raises:
        TypeError: ``input``, ``weight`` (or a given ``bias``) is not a tensor, ``beta`` is not a real
            number, ``input`` is not floating point, or ``weight`` or ``bias`` has another dtype.
        ValueError: a shape does not fit (``input`` 0-D, ``weight`` not 2-D or of another ``in_features``,
            ``bias`` not ``[out_features]``), ``weight`` or ``bias`` is on another device, or ``beta`` is
            not finite.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensors("tsgb_linear", input=input, weight=weight, bias=bias)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"tsgb_linear: beta must be a real number, got {type(beta).__name__}")
    return ops.tsgb_linear.default(input, weight, bias, float(beta))


def tsgb_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    r"""``F.conv2d`` forward; TSGB-Conv backward to the input, per group:

    .. math:: R = \sum_{c_o} G \odot Z,\ S = \textstyle\sum_{\text{window}} \sum_{c_i} |X|,\
              U = \text{window}^\top(R / (S + 10^{-10})),\ \partial X_{c_i} = \operatorname{sign}(X_{c_i})\, U

    which conserves relevance: :math:`\sum X \odot \partial X = \sum G \odot Z`. Weight and bias
    gradients are the ordinary ones.

    Args:
        input: the images X, ``[N, C_in, H, W]``, float32, float64, float16 or bfloat16.
        weight: the kernels, ``[C_out, C_in / groups, kh, kw]``, of the dtype and device of ``input``.
        bias: an optional bias ``[C_out]``, of the dtype and device of ``input``; None for no bias.
        stride: an int or a pair ``(sh, sw)``, each at least 1 (default 1).
        padding: implicit zero padding on both sides, an int or a pair ``(ph, pw)``, each at least 0
            (default 0).
        dilation: an int or a pair ``(dh, dw)``, each at least 1 (default 1).
        groups: the number of groups, which divides ``C_in`` and ``C_out`` (default 1).

    Returns:
        ``F.conv2d(input, weight, bias, stride, padding, dilation, groups)``, ``[N, C_out, H_out, W_out]``.

    Raises:
        TypeError: ``input`` or ``weight`` (or a given ``bias``) is not a tensor, ``stride``, ``padding``
            or ``dilation`` is not an int or a pair of ints, ``input`` is not floating point, or
            ``weight`` or ``bias`` has another dtype.
        ValueError: ``input`` or ``weight`` is not 4-D, a stride, padding or dilation is out of range,
            ``groups`` does not fit the channels, ``bias`` is not ``[C_out]``, the dilated kernel is
            larger than the padded input, or ``weight`` or ``bias`` is on another device.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensors("tsgb_conv2d", input=input, weight=weight, bias=bias)
    return ops.tsgb_conv2d.default(
        input,
        weight,
        bias,
        int_pair("stride", stride),
        int_pair("padding", padding),
        int_pair("dilation", dilation),
        int(groups),
    )


def tsgb_batch_norm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Inference batch norm forward; backward passes relevance unchanged:
    :math:`\partial X = G \odot Y / X` (0 where X = 0).

    Args:
        input: the features X, ``[N, C, ...]`` (at least 2-D), float32, float64, float16 or bfloat16.
        running_mean: the running mean ``[C]``, of the dtype and device of ``input``.
        running_var: the running variance ``[C]``, of the dtype and device of ``input``.
        weight: an optional scale ``[C]``, of the dtype and device of ``input``; None for no scale.
        bias: an optional shift ``[C]``, of the dtype and device of ``input``; None for no shift.
        eps: the value added to the variance for numerical stability (default 1e-5).

    Returns:
        Y, the batch norm of ``input`` with the running statistics (as in eval mode), of the shape of
        ``input``.

    Raises:
        TypeError: a tensor argument (other than a None ``weight`` or ``bias``) is not a tensor, ``input``
            is not floating point, or another tensor has another dtype.
        ValueError: ``input`` has fewer than 2 dimensions, the statistics, ``weight`` or ``bias`` are not
            ``[C]``, or one of them is on another device.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensors(
        "tsgb_batch_norm",
        optional=("weight", "bias"),
        input=input,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    return ops.tsgb_batch_norm.default(input, weight, bias, running_mean, running_var, float(eps))


def tsgb_avg_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    r"""``F.avg_pool2d`` forward; backward shares the relevance :math:`G \odot Y` of each window
    equally over its input positions (the padding takes none, so relevance is conserved), divided by X
    (0 where X = 0).

    Args:
        input: the images X, ``[N, C, H, W]``, float32, float64, float16 or bfloat16.
        kernel_size: the window size, an int or a pair ``(kh, kw)``, each at least 1.
        stride: an int or a pair ``(sh, sw)``, each at least 1; None (default) for ``kernel_size``.
        padding: implicit zero padding on both sides, an int or a pair ``(ph, pw)``, each at least 0 and
            at most half the kernel size (default 0).

    Returns:
        ``F.avg_pool2d(input, kernel_size, stride, padding)`` (``ceil_mode=False``,
        ``count_include_pad=True``), ``[N, C, H_out, W_out]``.

    Raises:
        TypeError: ``input`` is not a tensor or not floating point, or ``kernel_size``, ``stride`` or
            ``padding`` is not an int or a pair of ints.
        ValueError: ``input`` is not 4-D, or a kernel size, stride or padding is out of range.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensor("tsgb_avg_pool2d", "input", input)
    kernel = int_pair("kernel_size", kernel_size)
    return ops.tsgb_avg_pool2d.default(
        input, kernel, kernel if stride is None else int_pair("stride", stride), int_pair("padding", padding)
    )


def tsgb_pass_through(input: Tensor, output: Tensor) -> Tensor:
    r"""The relevance pass-through of an elementwise layer :math:`Y = f(X)` (an activation such as
    ReLU6, SiLU, GELU or Hardswish; a normalisation): forward returns a copy of ``output``, the layer's
    value computed by the caller; backward passes relevance unchanged,
    :math:`\partial X = G \odot Y / X` (0 where X = 0), so that :math:`\sum X \partial X = \sum G Y`.
    No gradient reaches ``output``.

    Args:
        input: the layer's input X, any shape, float32, float64, float16 or bfloat16.
        output: the layer's output Y = f(X), of the shape, dtype and device of ``input``.

    Returns:
        A copy of ``output`` (the network may modify it in place; the backward reads ``output``).

    Raises:
        TypeError: an argument is not a tensor, ``input`` is not floating point, or ``output`` has
            another dtype.
        ValueError: ``output`` has another shape or device.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensors("tsgb_pass_through", input=input, output=output)
    return ops.tsgb_pass_through.default(input, output)


def _conv_out(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@register_fake("torchcam_ops::rectified_relu")
def _rectified_relu_fake(input: Tensor, mode: str) -> Tensor:
    return torch.empty_like(input)


@register_fake("torchcam_ops::rectified_relu_backward")
def _rectified_relu_backward_fake(grad_output: Tensor, input: Tensor, mode: str) -> Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("torchcam_ops::tsgb_linear")
def _tsgb_linear_fake(input, weight, bias, beta=1.0):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@register_fake("torchcam_ops::tsgb_linear_backward")
def _tsgb_linear_backward_fake(grad_output, input, weight, beta):
    return input.new_empty(input.shape)


@register_fake("torchcam_ops::tsgb_conv2d")
def _tsgb_conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    n, _, h, w = input.shape
    kh, kw = weight.shape[2:]
    return input.new_empty(
        (
            n,
            weight.shape[0],
            _conv_out(h, kh, stride[0], padding[0], dilation[0]),
            _conv_out(w, kw, stride[1], padding[1], dilation[1]),
        )
    )


@register_fake("torchcam_ops::tsgb_conv2d_backward")
def _tsgb_conv2d_backward_fake(grad_output, input, output, kernel_size, stride, padding, dilation, groups):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("torchcam_ops::tsgb_batch_norm")
def _tsgb_batch_norm_fake(input, weight, bias, running_mean, running_var, eps):
    return torch.empty_like(input)


@register_fake("torchcam_ops::tsgb_batch_norm_backward")
def _tsgb_batch_norm_backward_fake(grad_output, input, weight, bias, running_mean, running_var, eps):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("torchcam_ops::tsgb_avg_pool2d")
def _tsgb_avg_pool2d_fake(input, kernel_size, stride, padding):
    n, c, h, w = input.shape
    return input.new_empty(
        (
            n,
            c,
            _conv_out(h, kernel_size[0], stride[0], padding[0], 1),
            _conv_out(w, kernel_size[1], stride[1], padding[1], 1),
        )
    )


@register_fake("torchcam_ops::tsgb_avg_pool2d_backward")
def _tsgb_avg_pool2d_backward_fake(grad_output, input, output, kernel_size, stride, padding):
    return torch.empty_like(input)


@register_fake("torchcam_ops::tsgb_pass_through")
def _tsgb_pass_through_fake(input, output):
    return torch.empty_like(output)


@register_fake("torchcam_ops::tsgb_pass_through_backward")
def _tsgb_pass_through_backward_fake(grad_output, input, output):
    return torch.empty_like(input)
