"""Solving A X = B for a symmetric positive definite A with numpy alone: Cholesky, then two triangular solves.

A Cholesky factorisation takes D³/3 flops against LU's 2D³/3 (``np.linalg.solve``); numpy has no triangular
solve, so the two triangular systems are solved block by block (a small dense solve per diagonal block, a
matrix product for the rest), which costs O(D²·K) for K right-hand sides.
"""

from __future__ import annotations

import numpy as np

BLOCK = 64  # rows per diagonal block: small dense solves stay cheap, the products stay BLAS-sized


def solve_positive_definite(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """X with ``matrix`` X = ``rhs`` ([D, D] symmetric positive definite, [D, K]); a matrix that is not positive
    definite in floating point (its Cholesky fails) is solved by LU (``np.linalg.solve``) instead."""
    try:
        lower = np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return np.linalg.solve(matrix, rhs)
    return _upper_solve(lower, _lower_solve(lower, rhs))


def _lower_solve(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Y with L Y = rhs, L lower triangular: forward substitution by blocks of rows."""
    solution = np.empty(rhs.shape, np.result_type(lower, rhs))
    for start in range(0, len(lower), BLOCK):
        end = min(start + BLOCK, len(lower))
        known = rhs[start:end] - lower[start:end, :start] @ solution[:start]
        solution[start:end] = np.linalg.solve(lower[start:end, start:end], known)
    return solution


def _upper_solve(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """X with Lᵀ X = rhs, L lower triangular: backward substitution by blocks of rows."""
    solution = np.empty(rhs.shape, np.result_type(lower, rhs))
    size = len(lower)
    for start in reversed(range(0, size, BLOCK)):
        end = min(start + BLOCK, size)
        known = rhs[start:end] - lower[end:, start:end].T @ solution[end:]
        solution[start:end] = np.linalg.solve(lower[start:end, start:end].T, known)
    return solution
