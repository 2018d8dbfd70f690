"""Typed wrappers over ``torch.ops.torchcam_ops.*``, with their fake kernels.

The ops themselves are defined and implemented in C++ (``csrc/``), autograd included (each forward
op's backward is an op of its own, called from a C++ autograd kernel: see
``csrc/ops/autograd_support.h`` for why not from Python). Importing this module after the extension
registers what torch.compile and torch.export need besides: a fake (meta) kernel per op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from torchcam_ops import _extension

#: Whether the native extension loaded; without it the wrappers raise its build error when called.
HAS_OPS = _extension.try_load()

__all__ = ["CAM_METHODS", "cam_reduce", "cam_postprocess"]

#: Names accepted by :func:`cam_reduce`, as the extension defines them (``kCamMethods`` in
#: ``csrc/kernels/cam_method.h``); empty when the extension could not load.
CAM_METHODS: tuple[str, ...] = _extension.cam_methods() if HAS_OPS else ()


class _MissingOps:
    """Stands in for ``torch.ops.torchcam_ops`` when the extension did not load: any op raises why."""

    def __getattr__(self, name: str):
        _extension.assert_has_ops()
        return getattr(torch.ops.torchcam_ops, name)


def _skip_registration(*args, **kwargs):
    return lambda fn: fn


_ops = torch.ops.torchcam_ops if HAS_OPS else _MissingOps()
# Fake kernels attach to the ops the extension defines.
_register_fake = torch.library.register_fake if HAS_OPS else _skip_registration


def _require_tensor(op: str, name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _require_tensors(op: str, optional: tuple[str, ...] = ("bias",), **values: object) -> None:
    """Every named value is a tensor; the ``optional`` ones may also be None."""
    for name, value in values.items():
        if value is not None or name not in optional:
            _require_tensor(op, name, value)


# ---------------------------------------------------------------------------------------------
# Argument checks, the same as the C++ ones (csrc/ops/*.cpp) with the same messages. The wrappers
# run them before calling an op and the fake kernels while tracing, so bad input fails the same
# way in eager code, under torch.compile and under torch.export, before reaching native code.


_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_floating(op: str, name: str, t: Tensor) -> None:
    torch._check_type(
        t.dtype in _FLOATING, lambda: f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}"
    )


def _check_activations_and_gradients(op: str, activations: Tensor, gradients: Tensor) -> None:
    torch._check_value(
        activations.dim() == 4,
        lambda: f"{op}: activations must be a 4-D [N, K, h, w] tensor, got shape {list(activations.shape)}",
    )
    torch._check_value(
        activations.shape == gradients.shape,
        lambda: (
            f"{op}: gradients must have the shape of activations {list(activations.shape)}, got {list(gradients.shape)}"
        ),
    )
    _check_floating(op, "activations", activations)
    torch._check_type(
        activations.dtype == gradients.dtype,
        lambda: f"{op}: gradients must have the dtype of activations ({activations.dtype}), got {gradients.dtype}",
    )
    torch._check_value(
        activations.device == gradients.device,
        lambda: f"{op}: gradients must be on the device of activations ({activations.device}), got {gradients.device}",
    )


def _check_method(op: str, method: str) -> None:
    if not CAM_METHODS:
        _extension.assert_has_ops()  # without the extension there are no methods: say why
    torch._check_value(method in CAM_METHODS, lambda: f"{op}: unknown method {method!r}; expected one of {CAM_METHODS}")


def _check_cam_postprocess_args(cam: Tensor, out_h: int, out_w: int) -> None:
    op = "cam_postprocess"
    torch._check_value(cam.dim() == 3, lambda: f"{op}: cam must be a 3-D [N, h, w] tensor, got shape {list(cam.shape)}")
    _check_floating(op, "cam", cam)
    torch._check_value(
        cam.shape[1] >= 1 and cam.shape[2] >= 1,
        lambda: f"{op}: cam maps must be at least 1x1, got shape {list(cam.shape)}",
    )
    torch._check_value(
        out_h >= 1 and out_w >= 1, lambda: f"{op}: out_h and out_w must be >= 1, got {out_h} and {out_w}"
    )


def cam_reduce(activations: Tensor, gradients: Tensor, method: str = "gradcam") -> Tensor:
    r"""The raw class activation map of one layer, in one fused pass over A and G.

    ``activations`` A and ``gradients`` G are ``[N, K, h, w]`` (same shape, dtype and device; any
    memory format). Returns the map L, ``[N, h, w]`` in the input dtype, before any ReLU. Half and
    bfloat16 accumulate in float32. Differentiable in A and G.

    ======================= ======================================================================
    method                  L
    ======================= ======================================================================
    ``gradcam``             :math:`w_k = \operatorname{mean}_{hw} G_k,\ L = \sum_k w_k A_k`
    ``abscam``              :math:`w_k = \operatorname{mean}_{hw} |G_k|,\ L = \sum_k w_k A_k`
    ``xgradcam``            :math:`w_k = \sum_{hw} A_k G_k / (\sum_{hw} A_k + 10^{-7}),\ L = \sum_k w_k A_k`
    ``gradcam++``           :math:`a = G^2 / (2G^2 + (\sum_{hw} A_k) G^3 + 10^{-6})` (0 where G = 0),
                            :math:`w_k = \sum_{hw} a\,\mathrm{ReLU}(G_k),\ L = \sum_k w_k A_k`
    ``layercam``            :math:`L = \sum_k \mathrm{ReLU}(G_k) A_k`
    ``hirescam``            :math:`L = \sum_k G_k A_k`
    ``gradcam_elementwise`` :math:`L = \sum_k \mathrm{ReLU}(G_k A_k)`
    ======================= ======================================================================
    """
    _require_tensor("cam_reduce", "activations", activations)
    _require_tensor("cam_reduce", "gradients", gradients)
    if not isinstance(method, str):
        raise TypeError(f"cam_reduce: method must be a str, one of {CAM_METHODS}, got {type(method).__name__}")
    if not torch.compiler.is_compiling():  # when compiling, the fake kernel runs the same checks
        _check_method("cam_reduce", method)
        _check_activations_and_gradients("cam_reduce", activations, gradients)
    return _ops.cam_reduce.default(activations, gradients, method)


def _output_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, torch.SymInt)) and not isinstance(size, bool):
        return size, size
    if isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, (int, torch.SymInt)) for s in size):
        return size[0], size[1]
    raise TypeError(f"cam_postprocess: size must be an int or a pair of ints (out_h, out_w), got {size!r}")


#: The most output elements one :func:`cam_postprocess` call may write (N x out_h x out_w): 2^28,
#: 1 GiB of float32. A bigger request is almost always a mistaken size (50000 for 500); raise the
#: limit with :func:`set_max_output_elements` (or ``TORCHCAM_OPS_MAX_OUTPUT_ELEMENTS``) when it is not.
MAX_OUTPUT_ELEMENTS = int(os.environ.get("TORCHCAM_OPS_MAX_OUTPUT_ELEMENTS", 2**28))


def set_max_output_elements(limit: int) -> int:
    """Sets :data:`MAX_OUTPUT_ELEMENTS` and returns the previous limit."""
    global MAX_OUTPUT_ELEMENTS
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit: expected a positive int, got {limit!r}")
    previous, MAX_OUTPUT_ELEMENTS = MAX_OUTPUT_ELEMENTS, limit
    return previous


def check_output_size(what: str, batch: int, out_h: int, out_w: int) -> None:
    """Refuses outputs above :data:`MAX_OUTPUT_ELEMENTS` with a clear error, before allocating them."""
    if isinstance(batch, int) and isinstance(out_h, int) and isinstance(out_w, int):
        if batch * out_h * out_w > MAX_OUTPUT_ELEMENTS:
            raise ValueError(
                f"{what}: {batch} maps of {out_h}x{out_w} would be {batch * out_h * out_w} elements, above "
                f"the limit of {MAX_OUTPUT_ELEMENTS} (torchcam_ops.ops.set_max_output_elements raises it)"
            )


def cam_postprocess(cam: Tensor, size: int | Sequence[int], *, relu: bool = True, normalize: bool = True) -> Tensor:
    r"""ReLU, bilinear resize and per-map min-max of ``[N, h, w]`` maps, fused into one op.

    .. math:: M = \operatorname{norm}(\operatorname{Up}(\mathrm{ReLU}(L))),\quad
              \operatorname{norm}(x) = \frac{x - \min x}{\max x - \min x}

    ``Up`` is ``F.interpolate(mode="bilinear", align_corners=False)`` to ``size`` (an int or
    ``(out_h, out_w)``); the min and max are those of the resized map, so every map spans [0, 1].
    The normalisation is scale-free: a map is constant, and becomes zeros, when its range is within 8
    ulps of its magnitude. ``relu=False`` / ``normalize=False`` skip those stages. Returns
    ``[N, out_h, out_w]`` in the input dtype. Differentiable in ``cam``. Outputs above
    :data:`MAX_OUTPUT_ELEMENTS` elements are refused.
    """
    _require_tensor("cam_postprocess", "cam", cam)
    out_h, out_w = _output_size(size)
    if not torch.compiler.is_compiling():
        _check_cam_postprocess_args(cam, out_h, out_w)
        if cam.dim() == 3:
            check_output_size("cam_postprocess: size", cam.shape[0], out_h, out_w)
    return _ops.cam_postprocess.default(cam, out_h, out_w, bool(relu), bool(normalize))


# ---------------------------------------------------------------------------------------------
# Fake kernels: shapes, dtypes and strides of each op's outputs, for torch.compile / torch.export.


@_register_fake("torchcam_ops::cam_reduce")
def _cam_reduce_fake(activations: Tensor, gradients: Tensor, method: str) -> Tensor:
    _check_method("cam_reduce", method)
    _check_activations_and_gradients("cam_reduce", activations, gradients)
    n, _, h, w = activations.shape
    return activations.new_empty((n, h, w))


@_register_fake("torchcam_ops::cam_reduce_backward")
def _cam_reduce_backward_fake(
    grad_cam: Tensor, activations: Tensor, gradients: Tensor, method: str
) -> tuple[Tensor, Tensor]:
    _check_method("cam_reduce_backward", method)
    _check_activations_and_gradients("cam_reduce_backward", activations, gradients)
    return (
        torch.empty_like(activations, memory_format=torch.contiguous_format),
        torch.empty_like(gradients, memory_format=torch.contiguous_format),
    )


@_register_fake("torchcam_ops::cam_postprocess")
def _cam_postprocess_fake(cam: Tensor, out_h: int, out_w: int, relu: bool = True, normalize: bool = True) -> Tensor:
    _check_cam_postprocess_args(cam, out_h, out_w)
    return cam.new_empty((cam.shape[0], out_h, out_w))


@_register_fake("torchcam_ops::cam_postprocess_backward")
def _cam_postprocess_backward_fake(
    grad_out: Tensor, cam: Tensor, out_h: int, out_w: int, relu: bool, normalize: bool
) -> Tensor:
    return torch.empty_like(cam, memory_format=torch.contiguous_format)


# =============================================================================================
# Rectified ReLU and the TSGB layers (docs/design.md): forwards are the ordinary layers, each backward
# to the input is a relevance rule implemented as an op of its own.

RELU_MODES: tuple[str, ...] = ("guided", "deconvnet", "plain")


def _pair(name: str, value: int | Sequence[int]) -> list[int]:
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
    """
    _require_tensor("rectified_relu", "input", input)
    if mode not in RELU_MODES:
        raise ValueError(f"rectified_relu: unknown mode {mode!r}; expected one of {RELU_MODES}")
    return _ops.rectified_relu.default(input, mode)


def tsgb_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None, beta: float = 1.0) -> Tensor:
    r"""``F.linear`` forward; TSGB-FC backward to the input.

    .. math:: W^\pm = \max/\min(W, 0),\ z^\pm = h W^{\pm\top},\ r = z^+ / |z^-|\ (0 \text{ where } z^- = 0),\
              g_h = g W^+ + \beta\,(g \odot r) W^-

    With :math:`\beta = 1`, :math:`\sum h\,g_h = 0` for a one-hot g. Weight and bias gradients are the
    ordinary ones.
    """
    _require_tensors("tsgb_linear", input=input, weight=weight, bias=bias)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"tsgb_linear: beta must be a real number, got {type(beta).__name__}")
    return _ops.tsgb_linear.default(input, weight, bias, float(beta))


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
    """
    _require_tensors("tsgb_conv2d", input=input, weight=weight, bias=bias)
    return _ops.tsgb_conv2d.default(
        input,
        weight,
        bias,
        _pair("stride", stride),
        _pair("padding", padding),
        _pair("dilation", dilation),
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
    :math:`\partial X = G \odot Y / X` (0 where X = 0)."""
    _require_tensors(
        "tsgb_batch_norm",
        optional=("weight", "bias"),
        input=input,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    return _ops.tsgb_batch_norm.default(input, weight, bias, running_mean, running_var, float(eps))


def tsgb_avg_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    r"""``F.avg_pool2d`` forward; backward shares the relevance :math:`G \odot Y` of each window
    equally over it, divided by X (0 where X = 0)."""
    _require_tensor("tsgb_avg_pool2d", "input", input)
    kernel = _pair("kernel_size", kernel_size)
    return _ops.tsgb_avg_pool2d.default(
        input, kernel, kernel if stride is None else _pair("stride", stride), _pair("padding", padding)
    )


def _conv_out(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@_register_fake("torchcam_ops::rectified_relu")
def _rectified_relu_fake(input: Tensor, mode: str) -> Tensor:
    return torch.empty_like(input)


@_register_fake("torchcam_ops::rectified_relu_backward")
def _rectified_relu_backward_fake(grad_output: Tensor, input: Tensor, mode: str) -> Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_register_fake("torchcam_ops::tsgb_linear")
def _tsgb_linear_fake(input, weight, bias, beta=1.0):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@_register_fake("torchcam_ops::tsgb_linear_backward")
def _tsgb_linear_backward_fake(grad_output, input, weight, beta):
    return input.new_empty(input.shape)


@_register_fake("torchcam_ops::tsgb_conv2d")
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


@_register_fake("torchcam_ops::tsgb_conv2d_backward")
def _tsgb_conv2d_backward_fake(grad_output, input, output, kernel_size, stride, padding, dilation, groups):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_register_fake("torchcam_ops::tsgb_batch_norm")
def _tsgb_batch_norm_fake(input, weight, bias, running_mean, running_var, eps):
    return torch.empty_like(input)


@_register_fake("torchcam_ops::tsgb_batch_norm_backward")
def _tsgb_batch_norm_backward_fake(grad_output, input, weight, bias, running_mean, running_var, eps):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_register_fake("torchcam_ops::tsgb_avg_pool2d")
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


@_register_fake("torchcam_ops::tsgb_avg_pool2d_backward")
def _tsgb_avg_pool2d_backward_fake(grad_output, input, output, kernel_size, stride, padding):
    return torch.empty_like(input)
