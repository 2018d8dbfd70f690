"""The TSGB rules of docs/design.md written as plain PyTorch autograd Functions, and a model converter
that applies them by hand to a deep copy of a model (the reference the tests and the benchmark
compare with)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def reference_conv_grad(x, w, b, stride, padding, dilation, groups, g):
    z = F.conv2d(x, w, b, stride, padding, dilation, groups)
    n, c, h, width = x.shape
    co, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    relevance = (g * z).reshape(n, groups, co // groups, *z.shape[2:]).sum(2)
    activation = x.abs().reshape(n, groups, c // groups, h, width).sum(2)
    ones = torch.ones(groups, 1, kh, kw, dtype=x.dtype, device=x.device)
    window = F.conv2d(activation, ones, None, stride, padding, dilation, groups)
    ratio = relevance / (window + 1e-10)
    natural = [
        (z.shape[2] - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1,
        (z.shape[3] - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1,
    ]
    collected = F.conv_transpose2d(
        ratio, ones, None, stride, padding, (h - natural[0], width - natural[1]), groups, dilation
    )
    return torch.sign(x) * collected.repeat_interleave(c // groups, dim=1)


def reference_linear_grad(h, w, g, beta):
    positive, negative = w.clamp_min(0), w.clamp_max(0)
    z_positive, z_negative = h @ positive.t(), h @ negative.t()
    ratio = torch.where(z_negative != 0, z_positive / z_negative.abs(), torch.zeros_like(z_positive))
    return g @ positive + beta * (g * ratio) @ negative


def reference_relevance_grad(x, y, g):
    return torch.where(x != 0, g * y / x, torch.zeros_like(x))


def reference_batch_norm_grad(x, y, g):
    """The pass-through where X != 0; the relevance G Y of units with X = 0 shared over the channels of
    their image position in proportion to |X|."""
    stranded = torch.where(x == 0, g * y, torch.zeros_like(x)).sum(1, keepdim=True)
    magnitude = x.abs().sum(1, keepdim=True)
    safe = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
    share = torch.where(magnitude > 0, stranded / safe, torch.zeros_like(stranded))
    return reference_relevance_grad(x, y, g) + torch.sign(x) * share


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, bias)
        ctx.args = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, weight, bias = ctx.saved_tensors
        return reference_conv_grad(x, weight, bias, *ctx.args, g), None, None, None, None, None, None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, beta):
        ctx.save_for_backward(h, weight)
        ctx.beta = beta
        return F.linear(h, weight, bias)

    @staticmethod
    def backward(ctx, g):
        h, weight = ctx.saved_tensors
        return reference_linear_grad(h, weight, g, ctx.beta), None, None, None


class _Relevance(torch.autograd.Function):
    """The batch-norm rule (:func:`reference_batch_norm_grad`)."""

    @staticmethod
    def forward(ctx, x, fn):
        y = fn(x)
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return reference_batch_norm_grad(x, y, g), None


class _AvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, padding):
        y = F.avg_pool2d(x, kernel, stride, padding)
        ctx.save_for_backward(x, y)
        ctx.args = (kernel, stride, padding)
        return y

    @staticmethod
    def backward(ctx, g):
        # Each window's relevance g * y shared equally over its positions with x != 0 (padding never).
        x, y = ctx.saved_tensors
        kernel, stride, padding = ctx.args
        n, c, h, w = x.shape
        windows = F.unfold(x.reshape(n * c, 1, h, w), kernel, padding=padding, stride=stride)  # [NC, k*k, L]
        carriers = (windows != 0).to(x.dtype)
        count = carriers.sum(1, keepdim=True)
        relevance = (g * y).reshape(n * c, 1, -1)
        shares = carriers * torch.where(count > 0, relevance / count.clamp_min(1), torch.zeros_like(relevance))
        gathered = F.fold(shares, (h, w), kernel, padding=padding, stride=stride).reshape(n, c, h, w)
        return torch.where(x != 0, gathered / x, torch.zeros_like(x)), None, None, None


class _Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def reference_avg_pool(x, kernel, stride, padding):
    """``F.avg_pool2d`` whose backward is the TSGB average-pooling rule, in plain PyTorch (unfold/fold)."""
    return _AvgPool.apply(x, kernel, stride, padding)


def reference_tsgb_model(model: nn.Module, classifier_name: str, beta: float = 1.0) -> nn.Module:
    """A deep copy of ``model`` with the reference rules in place of the TSGB layers."""
    converted = copy.deepcopy(model)
    for name, module in list(converted.named_modules()):
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = converted.get_submodule(parent_name) if parent_name else converted
        if name == classifier_name:
            new = _Wrap(lambda h, m=module: _Linear.apply(h, m.weight, m.bias, beta))
        elif type(module) is nn.Conv2d:
            new = _Wrap(lambda x, m=module: _Conv.apply(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups))
        elif type(module) is nn.BatchNorm2d:
            new = _Wrap(
                lambda x, m=module: _Relevance.apply(
                    x, lambda t: F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
                )
            )
        elif type(module) is nn.AvgPool2d:
            new = _Wrap(lambda x, m=module: _AvgPool.apply(x, m.kernel_size, m.stride, m.padding))
        elif isinstance(module, nn.ReLU) and module.inplace:
            new = nn.ReLU()
        else:
            continue
        setattr(parent, child, new)
    return converted


def reference_tsgb_maps(
    model: nn.Module, classifier_name: str, x: torch.Tensor, targets: torch.Tensor, raw: bool = False
) -> torch.Tensor:
    """TSGB maps [N, H, W] of ``x`` for one class per image, by the reference rules."""
    converted = reference_tsgb_model(model, classifier_name)
    leaf = x.detach().requires_grad_(True)
    logits = converted(leaf)
    seed = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)
    (grad,) = torch.autograd.grad(logits, leaf, seed)
    relevance = (leaf * grad).sum(1).detach()
    if raw:
        return relevance
    relevance = relevance.clamp_min(0)
    peak = relevance.amax((1, 2), keepdim=True)
    return torch.where(peak > 0, relevance / torch.where(peak > 0, peak, 1), 0)
