"""The nmf_sweep op against a plain loop of its formula and scikit-learn's own sweep, in float64;
its edge cases, half precision and opcheck."""

from __future__ import annotations

import pytest
import torch

from torchcam_ops.ops import nmf_sweep


def reference_sweep(factor: torch.Tensor, gram: torch.Tensor, products: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The coordinate-descent sweep written out element by element, in float64."""
    f = factor.double().clone()
    gram, products = gram.double(), products.double()
    violation = 0.0
    for i in range(f.shape[0]):
        for t in range(f.shape[1]):
            gradient = float((gram[t] * f[i]).sum() - products[i, t])
            projected = min(gradient, 0.0) if f[i, t] == 0 else gradient
            violation += abs(projected)
            if gram[t, t] != 0:
                f[i, t] = max(float(f[i, t]) - gradient / float(gram[t, t]), 0.0)
    return f, violation


def problem(rows: int = 7, columns: int = 5, components: int = 3, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, columns, generator=generator, dtype=torch.float64)
    factor = torch.rand(rows, components, generator=generator, dtype=torch.float64)
    factor[0, 1] = 0  # a component at its bound
    other = torch.rand(columns, components, generator=generator, dtype=torch.float64)  # S^T
    return factor.to(dtype), (other.T @ other).to(dtype), (x @ other).to(dtype)


def test_the_sweep_is_its_formula():
    factor, gram, products = problem()
    updated, violation = nmf_sweep(factor, gram, products)
    expected, expected_violation = reference_sweep(factor, gram, products)
    torch.testing.assert_close(updated, expected, rtol=0, atol=1e-14)
    assert violation.shape == () and violation.dtype == torch.float64
    assert float(violation) == pytest.approx(expected_violation, rel=1e-14)
    assert torch.equal(factor, problem()[0])  # the input is not changed


def test_the_sweep_is_scikit_learns():
    cdnmf = pytest.importorskip("sklearn.decomposition._cdnmf_fast")
    factor, gram, products = problem(rows=30, columns=11, components=6, seed=1)
    theirs = factor.numpy().copy()
    their_violation = cdnmf._update_cdnmf_fast(theirs, gram.numpy(), products.numpy(), torch.arange(6).numpy())
    ours, violation = nmf_sweep(factor, gram, products)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=1e-13)
    assert float(violation) == pytest.approx(their_violation, rel=1e-13)


def test_a_component_without_curvature_stays_and_a_positive_gradient_at_zero_is_no_violation():
    factor = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    gram = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    products = torch.tensor([[-3.0, 5.0]], dtype=torch.float64)
    updated, violation = nmf_sweep(factor, gram, products)
    # component 0: gradient 0 * 1 + 2 * 0 + 3 = 3 > 0 at the bound: stays 0, no violation;
    # component 1: gradient -5, no curvature: stays 2, violation 5
    assert updated.tolist() == [[0.0, 2.0]]
    assert float(violation) == 5.0


def test_no_rows_is_no_violation():
    updated, violation = nmf_sweep(torch.zeros(0, 3), torch.eye(3), torch.zeros(0, 3))
    assert updated.shape == (0, 3) and float(violation) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sweeps_in_float32(dtype):
    factor, gram, products = problem(dtype=dtype)
    updated, violation = nmf_sweep(factor, gram, products)
    expected, expected_violation = nmf_sweep(factor.float(), gram.float(), products.float())
    assert updated.dtype == dtype and violation.dtype == torch.float32
    assert torch.equal(updated, expected.to(dtype))
    assert torch.equal(violation, expected_violation)


def test_the_result_does_not_depend_on_the_thread_count():
    factor, gram, products = problem(rows=5000, columns=9, components=16, seed=2, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nmf_sweep(factor, gram, products)
        torch.set_num_threads(max(2, threads))
        many = nmf_sweep(factor, gram, products)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_non_tensor_arguments_are_refused_by_name():
    with pytest.raises(TypeError, match="nmf_sweep: gram must be a torch.Tensor, got list"):
        nmf_sweep(torch.rand(2, 2), [[1.0]], torch.rand(2, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    torch.library.opcheck(torch.ops.torchcam_ops.nmf_sweep.default, problem(dtype=dtype))
