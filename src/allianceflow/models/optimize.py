r"""The optimiser and the convergence check that both back-ends use.

Both back-ends maximise a profiled (RE)ML log-likelihood over the relative covariance
factor :math:`\theta` (lme4's parameterisation), whose diagonal entries -- standard
deviations relative to the residual SD -- are bounded below. They share:

* :func:`newton_polish`: safeguarded Newton steps on the free coordinates (those not on the
  bound), with step halving until the objective does not get worse;
* :func:`newton_decrement`: the convergence test, :math:`\tfrac12 g^\top H^{-1} g` (the
  objective still to gain by one more Newton step) with :math:`H` positive definite;
* boundary handling for the fast engine (:func:`minimize_bounded`): a variance that stops
  within the boundary tolerance is set to 0 when that costs nothing, a variance at 0 that
  is not a minimum is stepped back into the interior (:func:`escape_saddle`), and the
  Karush-Kuhn-Tucker condition is checked on the bound (:func:`check_bounded`).

The statsmodels back-end supplies the analytic score of ``MixedLM`` as gradient; the fast
engine works from deviance values alone (finite differences, :func:`central_grad`,
:func:`fd_hessian`), memoised, so that a Newton step's gradient and Hessian share their
evaluations along the axes. Objectives here are minimised (a deviance, or minus a log-likelihood).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize

__all__ = [
    "central_grad",
    "forward_grad",
    "fd_hessian",
    "newton_polish",
    "newton_decrement",
    "escape_saddle",
    "check_bounded",
    "BoundedOptimum",
    "minimize_bounded",
]


#: Relative step of the central differences of :func:`minimize_bounded`'s Newton polish and
#: convergence check; gradient and Hessian share it, so that with a memoised objective the
#: gradient reuses the Hessian's evaluations along the axes.
FD_STEP = 1e-4


def central_grad(f, x, lower, h=1e-5):
    """Central-difference gradient; one-sided (second order) next to a lower bound."""
    g = np.zeros_like(x)
    f0 = None
    for j in range(len(x)):
        step = h * max(1.0, abs(x[j]))
        if x[j] - step < lower[j]:
            if f0 is None:
                f0 = f(x)
            e = np.zeros_like(x)
            e[j] = step
            g[j] = (-3 * f0 + 4 * f(x + e) - f(x + 2 * e)) / (2 * step)
        else:
            e = np.zeros_like(x)
            e[j] = step
            g[j] = (f(x + e) - f(x - e)) / (2 * step)
    return g


def forward_grad(f, x, lower, h=1e-7):
    """Forward-difference gradient (cheap; for the quasi-Newton phase only)."""
    f0 = f(x)
    g = np.zeros_like(x)
    for j in range(len(x)):
        e = np.zeros_like(x)
        e[j] = h * max(1.0, abs(x[j]))
        g[j] = (f(x + e) - f0) / e[j]
    return g


def fd_hessian(f, x, free, h=1e-4, *, cross="four-point"):
    r"""Central-difference Hessian over the ``free`` coordinates (function values only).

    With steps :math:`h_a = h\max(1, |x_a|)` along coordinate unit vectors :math:`e_a`, the
    diagonal is :math:`(f(x + h_a e_a) - 2f(x) + f(x - h_a e_a)) / h_a^2`. Off the
    diagonal, ``cross="four-point"`` takes the usual

    .. math::

        H_{ab} = \frac{f(x + h_a e_a + h_b e_b) - f(x + h_a e_a - h_b e_b)
                 - f(x - h_a e_a + h_b e_b) + f(x - h_a e_a - h_b e_b)}{4 h_a h_b},

    four evaluations per pair; ``cross="axis"`` takes

    .. math::

        H_{ab} = \frac{f(x + h_a e_a + h_b e_b) + f(x - h_a e_a - h_b e_b)
                 - f(x \pm h_a e_a) - f(x \pm h_b e_b) + 2 f(x)}{2 h_a h_b},

    (both signs summed), which reuses the diagonal's evaluations and needs two new ones per
    pair. Both are second-order accurate (Taylor expansion to fourth order; Nocedal &
    Wright 2006, sec. 8.1): :math:`1 + 2k + 4\binom{k}{2}` evaluations against
    :math:`1 + 2k + 2\binom{k}{2}` for *k* free coordinates. With a memoised *f* and
    :func:`central_grad` at the same *h*, the gradient then costs nothing more.
    """
    idx = np.flatnonzero(free)
    k = len(idx)
    H = np.zeros((k, k))
    f0 = f(x)
    steps = [h * max(1.0, abs(x[j])) for j in idx]
    unit = []
    for a in range(k):
        e = np.zeros_like(x)
        e[idx[a]] = steps[a]
        unit.append(e)
    plus = [f(x + e) for e in unit]
    minus = [f(x - e) for e in unit]
    for a in range(k):
        H[a, a] = (plus[a] - 2 * f0 + minus[a]) / steps[a] ** 2
        ea = unit[a]
        for b in range(a):
            eb = unit[b]
            if cross == "axis":
                num = (
                    f(x + ea + eb)
                    + f(x - ea - eb)
                    - plus[a]
                    - minus[a]
                    - plus[b]
                    - minus[b]
                    + 2 * f0
                )
                H[a, b] = H[b, a] = num / (2 * steps[a] * steps[b])
            else:
                H[a, b] = H[b, a] = (
                    f(x + ea + eb) - f(x + ea - eb) - f(x - ea + eb) + f(x - ea - eb)
                ) / (4 * steps[a] * steps[b])
    return H


def newton_polish(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    f_x: float,
    *,
    grad: Callable[[np.ndarray], np.ndarray],
    hess: Callable[[np.ndarray, np.ndarray], np.ndarray],
    free_at: Callable[[np.ndarray], np.ndarray],
    max_steps: int,
    min_t: float,
    lower: np.ndarray | None = None,
    decrement_tol: float | None = None,
    gain_tol: float | None = None,
    require_finite: bool = False,
) -> tuple[np.ndarray, float, int]:
    r"""Safeguarded Newton descent on the free coordinates of *x*.

    Each step solves :math:`H s = g` over the coordinates ``free_at(x)`` (the others, on
    their bound, are held) and tries :math:`x - t s` for :math:`t = 1, 1/2, \ldots` down to
    ``min_t``, taking the first point whose objective is not worse (projected onto
    ``lower``). It stops when :math:`H` is not positive definite, no step is accepted,
    the predicted gain :math:`\tfrac12 g^\top s` is below ``decrement_tol``, or the gain
    realised is below ``gain_tol``. Quasi-Newton optimisers stop early on flat likelihoods;
    a few Newton steps finish the job with quadratic convergence.

    Parameters
    ----------
    f : callable
        The objective to minimise.
    x, f_x : array, float
        The starting point and its objective value.
    grad : callable
        ``grad(x)``: the gradient of *f* over all coordinates.
    hess : callable
        ``hess(x, free)``: the Hessian of *f* over the coordinates where ``free`` is True.
    free_at : callable
        ``free_at(x)``: a boolean mask of the coordinates to move.
    max_steps : int
    min_t : float
        The smallest step fraction tried.
    lower : array, optional
        Lower bounds the trial points are projected onto.
    decrement_tol, gain_tol : float, optional
        Stopping rules (see above); None: not used.
    require_finite : bool, default False
        Stop at a non-finite gradient or Hessian, and accept only finite objective values.

    Returns
    -------
    (array, float, int)
        The final point, its objective value and the number of steps taken.
    """
    steps = 0
    for _ in range(max_steps):
        free = free_at(x)
        if not free.any():
            break
        g = grad(x)[free]
        H = hess(x, free)
        if require_finite and not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
            break
        try:
            np.linalg.cholesky(H)
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        if decrement_tol is not None and 0.5 * g @ step < decrement_tol:
            break
        t, moved = 1.0, False
        while t > min_t:
            cand = x.copy()
            cand[free] -= t * step
            if lower is not None:
                cand = np.maximum(cand, lower)
            fc = f(cand)
            if (not require_finite or math.isfinite(fc)) and fc <= f_x:
                moved = True
                break
            t /= 2
        if not moved:
            break
        gain = f_x - fc
        x, f_x = cand, fc
        steps += 1
        if gain_tol is not None and gain < gain_tol:
            break
    return x, f_x, steps


def newton_decrement(g: np.ndarray, H: np.ndarray) -> tuple[bool, float]:
    r"""Whether :math:`H` is positive definite, and :math:`\tfrac12 g^\top H^{-1} g`.

    The decrement is the gain in the objective that one more Newton step predicts; it is
    scale-free in the sense that matters for a likelihood (log-likelihood units), unlike an
    absolute gradient tolerance, which large data trip. NaN when :math:`H` is not
    positive definite.
    """
    try:
        np.linalg.cholesky(H)
        return True, float(0.5 * g @ np.linalg.solve(H, g))
    except np.linalg.LinAlgError:
        return False, float("nan")


def escape_saddle(f, x, f_best, lo, boundary_tol, theta_slices):
    """Leave a stationary point on the boundary that is not a minimum.

    For each correlated block (a level with two or more θ) that has a diagonal θ at 0, the
    finite-difference Hessian of the deviance over all of the block's θ (a diagonal θ may be
    evaluated below 0: Λ and -Λ give the same covariance) is checked for negative curvature;
    if there is some, steps along that eigenvector (oriented into the interior) are tried
    and the first that lowers the deviance is taken. lme4's ``restart_edge`` serves the same
    purpose by restarting the optimiser.
    """
    at_zero = np.isfinite(lo) & (x <= boundary_tol * 1e-2)
    for sl, _rows, _cols in theta_slices:
        idx = np.arange(len(x))[sl]
        if len(idx) < 2 or not at_zero[idx].any():
            continue
        mask = np.zeros(len(x), dtype=bool)
        mask[idx] = True
        w, V = np.linalg.eigh(fd_hessian(f, x, mask))
        if w[0] >= -1e-8 * max(1.0, float(np.abs(w).max())):
            continue
        v = np.zeros(len(x))
        v[idx] = V[:, 0]
        if v[at_zero].sum() < 0:
            v = -v
        for t in (1e-2, 1e-1, 0.5, 1.0):
            trial = np.maximum(x + t * v, lo)
            ft = f(trial)
            if ft < f_best - 1e-9:
                return trial, ft, True
    return x, f_best, False


def check_bounded(f, x, lo, boundary_tol):
    """Check convergence of the fast engine's bounded minimisation.

    On the free coordinates the Hessian must be positive definite (and the Newton decrement
    is returned); at the zero bound the deviance must not decrease into the interior (first
    and second order).

    Returns
    -------
    (bool, float, bool, array, array)
        Hessian positive definite, Newton decrement, KKT condition on the bound, the full
        gradient, and the mask of coordinates on the bound.
    """
    on_bound = np.isfinite(lo) & (x <= boundary_tol * 1e-2)
    free = ~on_bound
    g = central_grad(f, x, lo, h=FD_STEP)
    hess_pd, decrement = True, 0.0
    if free.any():
        hess_pd, decrement = newton_decrement(
            g[free], fd_hessian(f, x, free, h=FD_STEP, cross="axis")
        )
    f0 = f(x)
    kkt_ok = True
    for j in np.flatnonzero(on_bound):
        trial = x.copy()
        trial[j] = 1e-3
        if g[j] < -1e-3 or f(trial) < f0 - 1e-9:
            kkt_ok = False
    return hess_pd, decrement, kkt_ok, g, on_bound


#: :func:`minimize_bounded` ends a quasi-Newton run once it has gained less than this
#: fraction of the convergence tolerance (deviance units) in each of
#: :data:`STALL_ITERATIONS` consecutive iterations.
STALL_FRACTION = 0.1
STALL_ITERATIONS = 2


class _StallStop:
    """An L-BFGS-B callback that ends the run when the objective has stopped falling.

    With finite-difference gradients L-BFGS-B cannot meet a tight gradient tolerance: near
    the optimum the difference quotients are noise, and it goes on for hundreds of
    evaluations that gain less than 1e-9 of deviance (``benchmarks/results/fit_path.txt``).
    The Newton polish that follows converges quadratically from there, so the run is ended
    once ``STALL_ITERATIONS`` consecutive iterations each gained less than *gain*.
    """

    def __init__(self, gain: float):
        self.gain = float(gain)
        self.last = math.inf
        self.stalled = 0

    def __call__(self, intermediate_result):
        value = float(intermediate_result.fun)
        self.stalled = self.stalled + 1 if self.last - value < self.gain else 0
        self.last = min(self.last, value)
        if self.stalled >= STALL_ITERATIONS:
            raise StopIteration


@dataclass
class BoundedOptimum:
    """Result of :func:`minimize_bounded` (on the optimiser's scale)."""

    x: np.ndarray
    value: float
    optimizer: str
    hessian_positive_definite: bool
    decrement: float
    kkt_ok: bool
    gradient: np.ndarray
    on_bound: np.ndarray


def minimize_bounded(
    f,
    x0,
    lower,
    *,
    unscale,
    boundary_tol,
    tol,
    maxiter,
    theta_slices,
    rounds=4,
    stall_tol=None,
) -> BoundedOptimum:
    """Minimise a deviance over θ with diagonal entries bounded below by 0.

    Each round: L-BFGS-B (forward-difference gradients), ended once two consecutive
    iterations each gained less than ``stall_tol`` (:class:`_StallStop`), a Newton polish
    (:func:`newton_polish`, central differences with step :data:`FD_STEP`, the Hessian's
    cross terms from the ``"axis"`` formula of :func:`fd_hessian`), a diagonal θ within
    ``boundary_tol`` of 0 set to 0 when that costs at most 1e-7 of deviance, an attempt
    to step back into the interior from a variance at 0 (alone, then jointly with its
    block, :func:`escape_saddle`), and the check (:func:`check_bounded`). Rounds repeat
    while an escape succeeded or the check fails, at most ``rounds`` times.

    Parameters
    ----------
    f : callable
        The deviance on the optimiser's scale (``x = θ * s``).
    x0 : array
        Start.
    lower : array
        Bounds of θ: 0 for diagonal entries, ``-inf`` otherwise.
    unscale : array
        ``s``: θ = x / s (for the boundary tolerance, which is on θ's scale).
    boundary_tol, tol, maxiter, theta_slices
        As :func:`allianceflow.models.engine.fit_lmm`; ``theta_slices`` are the θ blocks.
    rounds : int, default 4
    stall_tol : float, optional
        Deviance gain per L-BFGS-B iteration below which it counts as stalled; default
        :data:`STALL_FRACTION` times ``tol``. Where the quasi-Newton run stops changes only
        how many evaluations the fit takes: the Newton polish and the check decide the
        answer.
    """
    lo_phi = np.where(np.isfinite(lower), 0.0, -np.inf)
    bounds = [(0.0, None) if np.isfinite(lo) else (None, None) for lo in lower]
    phi = x0
    optimizer = "L-BFGS-B"
    hess_pd, decrement, kkt_ok = False, float("nan"), False
    f_best = f(phi)
    if stall_tol is None:
        stall_tol = STALL_FRACTION * tol

    def free_at(x):
        return ~(np.isfinite(lo_phi) & (x <= boundary_tol * 1e-2))

    for _round in range(rounds):
        res = optimize.minimize(
            f,
            phi,
            jac=lambda x: forward_grad(f, x, lo_phi),
            method="L-BFGS-B",
            bounds=bounds,
            callback=_StallStop(stall_tol),
            options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-9, "maxcor": 20},
        )
        cand = np.maximum(res.x, lo_phi)
        fc = f(cand)
        if fc <= f_best:
            phi, f_best = cand, fc
        phi, f_best, steps = newton_polish(
            f,
            phi,
            f_best,
            grad=lambda x: central_grad(f, x, lo_phi, h=FD_STEP),
            hess=lambda x, free: fd_hessian(f, x, free, h=FD_STEP, cross="axis"),
            free_at=free_at,
            max_steps=20,
            min_t=1e-4,
            lower=lo_phi,
            decrement_tol=tol * 1e-3,
        )
        if steps:
            optimizer = "L-BFGS-B + Newton"
        # a diagonal θ that stops within boundary_tol of 0 is on the boundary (it is reported
        # there): set it to 0 when that costs at most 1e-7 of deviance (the deviance is even
        # and flat in it), so that the convergence check holds it on the bound instead of
        # asking for curvature in a direction that has none
        near = np.isfinite(lower) & (phi > 0) & (phi / unscale < boundary_tol)
        if near.any():
            snapped = np.where(near, 0.0, phi)
            fs = f(snapped)
            if fs <= f_best + 1e-7:
                phi, f_best = snapped, fs
        # a variance at 0 may be a stationary point that is not a minimum (the deviance is
        # even in a diagonal θ): try stepping back into the interior
        escaped = False
        for j in np.flatnonzero(np.isfinite(lower) & (phi <= boundary_tol * 1e-2)):
            for delta in (1e-3, 1e-2, 1e-1, 0.5):
                trial = phi.copy()
                trial[j] = delta
                ft = f(trial)
                if ft < f_best - 1e-9:
                    phi, f_best, escaped = trial, ft, True
                    break
        if not escaped:
            # ... or jointly with the other entries of its block: at Λ's (θ11, θ21) = (0, 0)
            # the deviance is flat in θ11 alone but can fall along a direction that moves
            # both (a saddle, not a minimum). Step along the most negative curvature.
            phi, f_best, escaped = escape_saddle(f, phi, f_best, lo_phi, boundary_tol, theta_slices)
        hess_pd, decrement, kkt_ok, g_full, on_bound = check_bounded(f, phi, lo_phi, boundary_tol)
        if not escaped and hess_pd and decrement < tol and kkt_ok:
            break
    return BoundedOptimum(phi, f_best, optimizer, hess_pd, decrement, kkt_ok, g_full, on_bound)
