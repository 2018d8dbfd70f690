"""pytest plugin (entry point ``torchcam_ops``): saliency fixtures for your own test suites."""

from __future__ import annotations

import pytest

from torchcam_ops import testing
from torchcam_ops.methods import explain


@pytest.fixture
def torchcam_explain():
    """The functional :func:`torchcam_ops.explain`."""
    return explain


@pytest.fixture(name="assert_explanation_in_region")
def assert_explanation_in_region_fixture():
    """:func:`torchcam_ops.testing.assert_explanation_in_region`."""
    return testing.assert_explanation_in_region
