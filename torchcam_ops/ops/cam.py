"""The fused CAM ops: ``cam_reduce`` (the raw map of one layer from its activations and gradients)
and ``cam_postprocess`` (ReLU, bilinear resize and min-max normalisation), with their fake kernels.

Argument checks: in eager code the C++ checks (``csrc/ops/checks.h`` and the ops' files) are the only
ones. The fake kernels repeat those about shapes, dtypes and names, with the same messages, so that bad
input fails while torch.compile or torch.export traces (as torchvision's meta registrations do);
``tests/test_torch_integration.py`` checks that both give the same error for each bad input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from torchcam_ops import _extension
from torchcam_ops.ops._registration import (
    HAS_OPS,
    check_floating,
    check_same_dtype_device,
    ops,
    register_fake,
    require_tensor,
)

__all__ = ["CAM_METHODS", "cam_postprocess", "cam_reduce", "check_output_size", "set_max_output_elements"]

#: Names accepted by :func:`cam_reduce`, as the extension defines them (``kCamMethods`` in
#: ``csrc/kernels/cam_method.h``); empty when the extension could not load.
CAM_METHODS: tuple[str, ...] = _extension.cam_methods() if HAS_OPS else ()


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

    Args:
        activations: the layer's output A, ``[N, K, h, w]``, float32, float64, float16 or bfloat16.
        gradients: the gradients G of the class scores with respect to A, of A's shape, dtype and device.
        method: one of :data:`CAM_METHODS` (the rows of the table above); default ``"gradcam"``.

    Returns:
        The raw maps L, ``[N, h, w]`` in the dtype of ``activations``, before any ReLU.

    Raises:
        TypeError: ``activations`` or ``gradients`` is not a tensor, ``method`` is not a str,
            ``activations`` is not floating point, or ``gradients`` has another dtype.
        ValueError: ``method`` is unknown, ``activations`` is not 4-D, or ``gradients`` has another
            shape or device.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensor("cam_reduce", "activations", activations)
    require_tensor("cam_reduce", "gradients", gradients)
    if not isinstance(method, str):
        raise TypeError(f"cam_reduce: method must be a str, one of {CAM_METHODS}, got {type(method).__name__}")
    if not CAM_METHODS:
        _extension.assert_has_ops()  # without the extension there are no methods: say why
    return ops.cam_reduce.default(activations, gradients, method)


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
    """Sets :data:`MAX_OUTPUT_ELEMENTS` and returns the previous limit.

    Args:
        limit: the new limit, the most elements (N x out_h x out_w) one output may have.

    Returns:
        The previous limit.

    Raises:
        ValueError: ``limit`` is not a positive int (a bool is refused too).
    """
    global MAX_OUTPUT_ELEMENTS
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit: expected a positive int, got {limit!r}")
    previous, MAX_OUTPUT_ELEMENTS = MAX_OUTPUT_ELEMENTS, limit
    return previous


def check_output_size(what: str, batch: int, out_h: int, out_w: int) -> None:
    """Refuses outputs above :data:`MAX_OUTPUT_ELEMENTS` with a clear error, before allocating them.

    Only Python ints are checked: sizes of another type (such as symbolic sizes while tracing) pass.

    Args:
        what: the name of the op and argument at fault, which begins the error message.
        batch: the number of maps N.
        out_h: the height of each map.
        out_w: the width of each map.

    Returns:
        None.

    Raises:
        ValueError: ``batch * out_h * out_w`` is above :data:`MAX_OUTPUT_ELEMENTS`.
    """
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

    Args:
        cam: the maps L, ``[N, h, w]`` with h, w >= 1, float32, float64, float16 or bfloat16 (e.g. the output
            of :func:`cam_reduce`).
        size: the output size: an int for square maps, or a pair ``(out_h, out_w)``; each at least 1.
        relu: whether to apply the ReLU before the resize (default True).
        normalize: whether to min-max normalise each resized map to [0, 1] (default True).

    Returns:
        The maps M, ``[N, out_h, out_w]`` in the dtype of ``cam``.

    Raises:
        TypeError: ``cam`` is not a tensor or not floating point, or ``size`` is not an int or a pair of ints.
        ValueError: ``cam`` is not 3-D or has an empty map, ``out_h`` or ``out_w`` is below 1, or the output
            would have more than :data:`MAX_OUTPUT_ELEMENTS` elements.
        ImportError: the native extension could not be loaded (its ``ExtensionBuildError``).
    """
    require_tensor("cam_postprocess", "cam", cam)
    out_h, out_w = _output_size(size)
    if not torch.compiler.is_compiling() and cam.dim() == 3:
        check_output_size("cam_postprocess: size", cam.shape[0], out_h, out_w)
    return ops.cam_postprocess.default(cam, out_h, out_w, bool(relu), bool(normalize))


# ---------------------------------------------------------------------------------------------
# Fake kernels: the C++ checks' conditions and messages, then the outputs' shapes and dtypes.


def _check_activations_and_gradients(op: str, activations: Tensor, gradients: Tensor) -> None:
    torch._check_value(
        activations.dim() == 4,
        lambda: f"{op}: activations must be a 4-D [N, K, h, w] tensor, got shape {list(activations.shape)}",
    )
    check_floating(op, "activations", activations)
    torch._check_value(
        activations.shape == gradients.shape,
        lambda: (
            f"{op}: gradients must have the shape of activations {list(activations.shape)}, got {list(gradients.shape)}"
        ),
    )
    check_same_dtype_device(op, "gradients", gradients, "activations", activations)


def _check_method(op: str, method: str) -> None:
    torch._check_value(
        method in CAM_METHODS,
        lambda: f"{op}: unknown method '{method}'; expected one of {', '.join(repr(m) for m in CAM_METHODS)}",
    )


def _check_cam_postprocess_args(cam: Tensor, out_h: int, out_w: int) -> None:
    op = "cam_postprocess"
    torch._check_value(cam.dim() == 3, lambda: f"{op}: cam must be a 3-D [N, h, w] tensor, got shape {list(cam.shape)}")
    check_floating(op, "cam", cam)
    torch._check_value(
        cam.shape[1] >= 1 and cam.shape[2] >= 1,
        lambda: f"{op}: cam maps must be at least 1x1, got shape {list(cam.shape)}",
    )
    torch._check_value(
        out_h >= 1 and out_w >= 1, lambda: f"{op}: out_h and out_w must be >= 1, got {out_h} and {out_w}"
    )


@register_fake("torchcam_ops::cam_reduce")
def _cam_reduce_fake(activations: Tensor, gradients: Tensor, method: str) -> Tensor:
    _check_method("cam_reduce", method)
    _check_activations_and_gradients("cam_reduce", activations, gradients)
    n, _, h, w = activations.shape
    return activations.new_empty((n, h, w))


@register_fake("torchcam_ops::cam_reduce_backward")
def _cam_reduce_backward_fake(
    grad_cam: Tensor, activations: Tensor, gradients: Tensor, method: str
) -> tuple[Tensor, Tensor]:
    op = "cam_reduce_backward"
    _check_method(op, method)
    _check_activations_and_gradients(op, activations, gradients)
    torch._check_value(
        grad_cam.dim() == 3, lambda: f"{op}: grad_cam must be a 3-D [N, h, w] tensor, got shape {list(grad_cam.shape)}"
    )
    n, _, h, w = activations.shape
    torch._check_value(
        tuple(grad_cam.shape) == (n, h, w),
        lambda: f"{op}: grad_cam must have shape [{n}, {h}, {w}], got {list(grad_cam.shape)}",
    )
    check_same_dtype_device(op, "grad_cam", grad_cam, "activations", activations)
    return (
        torch.empty_like(activations, memory_format=torch.contiguous_format),
        torch.empty_like(gradients, memory_format=torch.contiguous_format),
    )


@register_fake("torchcam_ops::cam_postprocess")
def _cam_postprocess_fake(cam: Tensor, out_h: int, out_w: int, relu: bool = True, normalize: bool = True) -> Tensor:
    _check_cam_postprocess_args(cam, out_h, out_w)
    return cam.new_empty((cam.shape[0], out_h, out_w))


@register_fake("torchcam_ops::cam_postprocess_backward")
def _cam_postprocess_backward_fake(
    grad_out: Tensor, cam: Tensor, out_h: int, out_w: int, relu: bool, normalize: bool
) -> Tensor:
    op = "cam_postprocess_backward"
    _check_cam_postprocess_args(cam, out_h, out_w)
    torch._check_value(
        grad_out.dim() == 3,
        lambda: f"{op}: grad_out must be a 3-D [N, out_h, out_w] tensor, got shape {list(grad_out.shape)}",
    )
    torch._check_value(
        tuple(grad_out.shape) == (cam.shape[0], out_h, out_w),
        lambda: f"{op}: grad_out must have shape [{cam.shape[0]}, {out_h}, {out_w}], got {list(grad_out.shape)}",
    )
    check_same_dtype_device(op, "grad_out", grad_out, "cam", cam)
    return torch.empty_like(cam, memory_format=torch.contiguous_format)
