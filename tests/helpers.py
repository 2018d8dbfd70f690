"""Models, inputs, model-state checks and error budgets shared by the test modules (no test module imports another)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from torchcam_ops.methods import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from torchcam_ops.methods.graphs import compiler_traces_autograd

CAM_FAMILY = {
    GradCAM: "gradcam",
    GradCAMPlusPlus: "gradcam++",
    XGradCAM: "xgradcam",
    LayerCAM: "layercam",
    HiResCAM: "hirescam",
    GradCAMElementWise: "gradcam_elementwise",
}


# Compiled explainer calls need a compiler that traces torch.autograd.grad; on an older torch they are
# refused or explained eagerly, which tests/test_graphs.py checks on every torch.
needs_compiled_autograd = pytest.mark.skipif(
    not compiler_traces_autograd(),
    reason=f"torch {torch.__version__} cannot compile torch.autograd.grad (no trace_autograd_ops)",
)


# torch 2.6's compiler cannot trace the rules' TorchFunctionMode (its lookups in frozensets of functions):
# a model compiled by the user inside nn.tsgb() or nn.guided() needs torch 2.11 or newer.
needs_traced_rules = pytest.mark.skipif(
    not compiler_traces_autograd(),
    reason=f"torch {torch.__version__}'s compiler cannot trace the rules' TorchFunctionMode",
)


def small_cnn(classes: int = 7) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, classes),
    ).eval()


def peer_cases(
    resnet18: nn.Module,
    resnet_layers: object,
    cnn_layers: object,
    resnet_size: tuple[int, int] = (64, 64),
    cnn_size: tuple[int, int] = (32, 32),
) -> dict[str, tuple[nn.Module, object, torch.Tensor]]:
    """The two architectures a method is compared with its peer on: (model, target layers, two images)
    for ResNet-18 (the ``resnet18`` fixture) and :func:`small_cnn`."""
    return {
        "resnet18": (
            resnet18,
            resnet_layers,
            torch.rand(2, 3, *resnet_size, generator=torch.Generator().manual_seed(1)),
        ),
        "small_cnn": (
            small_cnn().eval(),
            cnn_layers,
            torch.rand(2, 3, *cnn_size, generator=torch.Generator().manual_seed(2)),
        ),
    }


def count_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def model_state(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(type(m), m.training) for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_same_state(before, after):
    assert before[1] == after[1] and before[2] == after[2]
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), key


def activations_and_gradients(shape, dtype, positive_activations=True):
    # Post-ReLU activations (non-negative) and signed gradients, as in a real network.
    a = torch.randn(shape, dtype=torch.float64)
    a = a.abs() if positive_activations else a
    g = torch.randn(shape, dtype=torch.float64) / math.sqrt(shape[2] * shape[3])
    return a.to(dtype), g.to(dtype)


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]


def assert_matches(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    """actual (computed in `dtype`) against a float64 reference, with an error budget scaled to
    the magnitude of the reference (sums of many terms lose absolute, not relative, precision)."""
    tol = tolerance(dtype)
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * max(scale, 1e-3), equal_nan=True)


class CheckpointedCnn(nn.Module):
    """A CNN whose first block runs under non-reentrant activation checkpointing (or plainly)."""

    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
        )
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 5)
        self.checkpointed = checkpointed

    def forward(self, x):
        if self.checkpointed:
            x = torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)
        else:
            x = self.block(x)
        return self.fc(self.head(x))
