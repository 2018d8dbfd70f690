from __future__ import annotations

import os
import tempfile

# A fresh compile cache per test session: Inductor's on-disk cache does not key on the schemas of
# custom ops, so a graph cached before an op changed would be replayed against the new op.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="torchcam-ops-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

import torchcam_ops.ops  # noqa: F401  (loads the extension: registers the ops, fake kernels and autograd)

pytest_plugins = ["pytester"]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
