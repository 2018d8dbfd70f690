from __future__ import annotations

import os
import subprocess
import sys
import tempfile

# A fresh compile cache per test session: Inductor's on-disk cache does not key on the schemas of
# custom ops, so a graph cached before an op changed would be replayed against the new op.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="torchcam-ops-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

import torchcam_ops.ops  # noqa: F401  (loads the extension: registers the ops, fake kernels and autograd)

pytest_plugins = ["pytester"]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# The first C++ error message that formats an integer, raised in a child process: a badly linked
# build (its own static libstdc++, see torchcam_ops/_link_check.py) dies there, and would take the
# whole test session with it at the first error-path test.
_NATIVE_ERROR_PROBE = """
import torch, torchcam_ops.ops
try:
    torch.ops.torchcam_ops.cam_postprocess.default(torch.rand(1, 3, 3), 0, 4)
except ValueError as error:
    print("ValueError", error)
"""


def native_error_probe() -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _NATIVE_ERROR_PROBE], capture_output=True, text=True, timeout=300
    )


def pytest_sessionstart(session):
    result = native_error_probe()
    if result.returncode != 0:
        pytest.exit(
            f"the extension dies on its first C++ error message (status {result.returncode}); rebuild it with "
            f"the system compiler (CXX=g++). The child's output:\n{result.stderr[-3000:]}",
            returncode=3,
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def resnet18():
    """torchvision's ResNet-18, random weights (seed 0), 10 classes, eval mode: the larger of the two
    architectures the peer-agreement tests compare on (one per test module: a test may change it)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
