"""The target layer found for a model whose user names none (``target_layers=None``)."""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from torchcam_ops.methods.calls import preserve_buffers
from torchcam_ops.targets import model_logits

logger = logging.getLogger("torchcam_ops")

#: The head's pooling resamples its input (a 2x2 map to 7x7, say): never a target layer.
_HEAD_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class FoundLayer(NamedTuple):
    """The layer :func:`find_target_layer` chose: its dotted name and its output's layout."""

    name: str
    #: None for maps ``[N, K, h, w]``, ``"tokens"`` for a transformer's ``[N, L, C]``
    reshape: Literal["tokens"] | None


def find_target_layer(model: nn.Module, example: Tensor | None = None) -> FoundLayer:
    """The last layer, in the order layers finish, whose output is spatial (``[N, K, h, w]`` with
    ``h w > 1``, or tokens ``[N, L, C]`` with ``L > 1``) and whose gradient of the top class score is
    nonzero at more than half of its positions.

    For a CNN that is the last block before the head's pooling (ResNet's ``layer4``, the ``features``
    of VGG, DenseNet, EfficientNet and MobileNet); for a vision transformer, whose head reads the class
    token only, the last layer before the last attention mixes the tokens (torchvision ViT's
    ``encoder.layers.encoder_layer_11.ln_1``, the ``norm1`` of timm's last block): the layers after it
    pass no gradient to the patch tokens, and their maps would be empty. One forward and one backward
    pass of ``example``; the model's buffers, parameters' gradients and modes are left as they were.

    Args:
        model: the model.
        example: an input batch, by default one random image ``[1, C, 224, 224]`` (C the input channels of
            the first convolution, else 3) in the dtype and on the device of the model's parameters.

    Returns:
        The layer's name in ``model.named_modules()`` (``name@k`` for the k-th call of a layer that runs
        several times) and the ``reshape`` its output needs.

    Raises:
        ValueError: the model does not run on ``example``, or no layer has such an output.
    """
    if example is None:
        example = _probe_input(model)
    outputs: list[tuple[str, nn.Module, Tensor]] = []
    calls: dict[str, int] = {}  # how many times each layer ran: a shared one is named with its call

    def record(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            if isinstance(output, Tensor) and output.dim() in (3, 4) and output.requires_grad:
                outputs.append((f"{name}@{call}", module, output))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        with preserve_buffers(model), torch.enable_grad():
            try:
                logits = model_logits(model(example.detach().requires_grad_(True)))
            except Exception as err:  # the user's model: say what to do instead
                raise ValueError(
                    f"target_layers=None: the model did not run on a {list(example.shape)} probe to find its target "
                    f"layer ({type(err).__name__}: {err}); name the layer, or call "
                    "find_target_layer(model, example) with an input it takes"
                ) from err
            if not isinstance(logits, Tensor) or logits.dim() < 2:
                raise ValueError("target_layers=None: the model's output is not class scores [N, classes, ...]")
            candidates = [(name, module, output) for name, module, output in outputs if _spatial(module, output)]
            if not candidates:
                raise ValueError(_NONE_FOUND)
            score = logits.flatten(1).max(1).values.sum()
            grads = torch.autograd.grad(score, [output for _, _, output in candidates], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    for (name_and_call, _, output), grad in zip(reversed(candidates), reversed(grads)):
        if grad is not None and _mostly_nonzero(grad):
            name = name_and_call.rpartition("@")[0]
            name = name_and_call if calls[name] > 1 else name
            found = FoundLayer(name, "tokens" if output.dim() == 3 else None)
            logger.info("target layer: %s (found with target_layers=None)", name)
            return found
    raise ValueError(_NONE_FOUND)


_NONE_FOUND = (
    "target_layers=None: no layer has a spatial output ([N, K, h, w] or tokens [N, L, C]) that the class "
    "score depends on; name the target layer"
)


def _probe_input(model: nn.Module) -> Tensor:
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    convolution = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = convolution.in_channels if convolution is not None else 3
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, channels, 224, 224, generator=generator).to(device=device, dtype=dtype)


def _spatial(module: nn.Module, output: Tensor) -> bool:
    if isinstance(module, _HEAD_POOLING):
        return False
    return output.shape[1] > 1 if output.dim() == 3 else output.shape[2] * output.shape[3] > 1


def _mostly_nonzero(grad: Tensor) -> bool:
    """Nonzero at more than half of the positions: tokens ``[N, L]`` or pixels ``[N, h, w]``."""
    per_position = grad.abs().sum(2 if grad.dim() == 3 else 1)
    return bool((per_position > 0).float().mean() > 0.5)
