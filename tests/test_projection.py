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


def sorted_projection(v: np.ndarray, radius: float) -> np.ndarray:
    """The sort-based projection (Duchi et al. 2008) of one row, in float64 numpy."""
    mags = np.abs(v)
    if mags.sum() <= radius:
        return v
    desc = np.sort(mags)[::-1]
    cumsum = np.cumsum(desc)
    ks = np.arange(1, v.size + 1)
    rho = np.nonzero(desc - (cumsum - radius) / ks > 0)[0][-1]
    theta = (cumsum[rho] - radius) / (rho + 1)
    return np.sign(v) * np.maximum(mags - theta, 0.0)


@pytest.mark.parametrize("kind", ["gaussian", "ties", "half zero", "heavy tail"])
def test_matches_the_sort_based_algorithm_on_feature_sized_rows(kind: str) -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((6, 4096))
    if kind == "ties":
        v = np.round(v * 2) / 2  # many equal magnitudes: the set above θ changes in blocks
    elif kind == "half zero":
        v[:, ::2] = 0.0
    elif kind == "heavy tail":
        v = rng.standard_cauchy((6, 4096))
    radii = np.abs(v).sum(axis=1) * np.array([1e-4, 0.01, 0.2, 0.5, 0.99, 1.5])  # the last row is inside its ball
    got = project_l1_ball(torch.tensor(v), torch.tensor(radii)).numpy()
    want = np.stack([sorted_projection(row, r) for row, r in zip(v, radii, strict=True)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(v).max())


def test_a_radius_far_below_the_norm_gives_finite_values_on_the_ball() -> None:
    # θ lands within rounding of the largest entry: no pass may divide by the empty set above it
    v = torch.full((3, 8192), 0.25, dtype=torch.float32)
    v[:, 0] = 1.0
    radii = torch.tensor([1e-7, 1e-3, 0.5])
    out = project_l1_ball(v, radii)
    assert torch.isfinite(out).all()
    assert (out.abs().sum(dim=1) <= radii * (1 + 1e-5) + 2 * torch.finfo(torch.float32).eps).all()  # one ulp of 1.0
