"""pytest plugin of torchcam-ops (entry point ``torchcam_ops``): saliency fixtures for your own test suites.

pytest loads this module in every session of the environment, so it lives outside the package (whose
import loads torch and the extension) and imports nothing of it until a fixture is used: unrelated test
suites pay nothing, and a broken or stale build never breaks them.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def torchcam_explain():
    """The functional :func:`torchcam_ops.explain`."""
    from torchcam_ops.methods import explain

    return explain


@pytest.fixture(name="assert_explanation_in_region")
def assert_explanation_in_region_fixture():
    """:func:`torchcam_ops.testing.assert_explanation_in_region`."""
    from torchcam_ops import testing

    return testing.assert_explanation_in_region
