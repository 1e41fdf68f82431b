"""The Cholesky solve streaming LDA uses, against numpy's LU solve, on matrices spanning many blocks."""

from __future__ import annotations

import numpy as np

from edgeft.common.positive_definite import BLOCK, solve_positive_definite


def test_cholesky_solve_matches_lu_on_an_ill_conditioned_covariance() -> None:
    rng = np.random.default_rng(0)
    size = 5 * BLOCK + 17  # several blocks and a partial last one
    samples = rng.standard_normal((size // 2, size)) * np.geomspace(1.0, 1e-3, size)  # singular, spread spectrum
    covariance = samples.T @ samples / len(samples)
    shrunk = 0.99 * covariance + 0.01 * np.trace(covariance) / size * np.eye(size)  # shrinkage 0.01
    rhs = rng.standard_normal((size, 10))
    expected = np.linalg.solve(shrunk, rhs)
    assert np.linalg.cond(shrunk) > 1e3
    np.testing.assert_allclose(
        solve_positive_definite(shrunk, rhs), expected, rtol=0, atol=1e-10 * np.abs(expected).max()
    )


def test_a_matrix_that_is_not_positive_definite_is_solved_by_lu() -> None:
    rng = np.random.default_rng(1)
    size = 2 * BLOCK + 3
    symmetric = rng.standard_normal((size, size))
    symmetric = symmetric + symmetric.T  # indefinite: Cholesky fails
    rhs = rng.standard_normal((size, 4))
    np.testing.assert_allclose(solve_positive_definite(symmetric, rhs), np.linalg.solve(symmetric, rhs), rtol=1e-12)
