"""The l1-ball projection against brute force, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from art_gifd.attacks.core import project_l1_ball


def brute_force(v: np.ndarray, radius: float) -> np.ndarray:
    """argmin ||w - v||² s.t. ||w||_1 <= r, by SLSQP on the split w = p - n, p, n >= 0."""
    d = v.size
    cons = [{"type": "ineq", "fun": lambda pn: radius - pn.sum()}]
    res = minimize(
        lambda pn: ((pn[:d] - pn[d:] - v) ** 2).sum(),
        x0=np.zeros(2 * d),
        jac=lambda pn: np.concatenate([2 * (pn[:d] - pn[d:] - v), -2 * (pn[:d] - pn[d:] - v)]),
        bounds=[(0, None)] * (2 * d),
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    return res.x[:d] - res.x[d:]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=6),
    st.floats(0.05, 6.0),
)
def test_matches_brute_force(values: list[float], radius: float) -> None:
    v = np.asarray(values, dtype=np.float64)
    got = project_l1_ball(torch.tensor(v).unsqueeze(0), radius).squeeze(0).numpy()
    want = brute_force(v, radius) if np.abs(v).sum() > radius else v
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rows_projected_independently_with_per_row_radius() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    radii = torch.tensor([0.5, 1.0, 100.0, 2.0, 3.0], dtype=torch.float64)
    out = project_l1_ball(v, radii)
    norms = out.flatten(1).abs().sum(dim=1)
    assert torch.all(norms <= radii + 1e-9)
    torch.testing.assert_close(out[2], v[2])  # inside its ball: unchanged
    for i in range(5):
        torch.testing.assert_close(out[i : i + 1], project_l1_ball(v[i : i + 1], float(radii[i])))
    # points outside the ball land on its surface
    outside = v.flatten(1).abs().sum(dim=1) > radii
    torch.testing.assert_close(norms[outside], radii[outside])


def test_projection_is_idempotent_and_keeps_signs() -> None:
    v = torch.randn(3, 50, dtype=torch.float64)
    once = project_l1_ball(v, 2.0)
    torch.testing.assert_close(project_l1_ball(once, 2.0), once)
    assert torch.all(once * v >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype: torch.dtype) -> None:
    assert project_l1_ball(torch.randn(2, 7, dtype=dtype), 1.0).dtype == dtype
