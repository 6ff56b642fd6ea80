r"""Generalised linear mixed models (binomial, Poisson) by Laplace and adaptive quadrature.

:func:`fit_glmm` fits what lme4's ``glmer`` fits for nested grouping factors: a binomial
(logit or probit link; 0/1 response or ``cbind(successes, failures)``) or Poisson (log link)
response with random intercepts and slopes at any number of nested levels, by the Laplace
approximation (``nAGQ = 1``) or, for a single scalar random effect, adaptive Gauss–Hermite
quadrature (``nAGQ > 1``). :func:`fit_backend` turns the fit into the
:class:`~allianceflow.models.result.BackendFit` from which
:func:`allianceflow.models.fit_model` builds a :class:`GLMMResult`.

The model
---------
With :math:`b = \Lambda_\theta u`, :math:`u \sim N(0, I)` and linear predictor
:math:`\eta = X\beta + Z\Lambda_\theta u`, the conditional mode :math:`\hat u` maximises
:math:`\log p(y \mid u) - \tfrac12\|u\|^2` and is found by penalised iteratively reweighted
least squares (PIRLS, the penalised least-squares formulation of Bates et al. 2015 with
GLM working weights, as lme4's ``glmer`` computes it in ``pwrssUpdate``): Fisher
scoring steps :math:`(\Lambda^\top Z^\top W Z \Lambda + I)\,\delta = \Lambda^\top Z^\top s
- u` (:math:`s_i = \partial \log p(y_i)/\partial\eta_i`, :math:`W` the GLM working weights
:math:`w_i\,\mu_i'^2/V(\mu_i)`) with step halving, iterated until a full step moves no
element of :math:`u` by more than :math:`10^{-6}` (logit, log: Newton's method, quadratic
convergence) or :math:`10^{-10}` (probit: Fisher scoring, linear convergence), so that
:math:`u` is at the mode to about :math:`10^{-10}`. (glmer stops on the relative change of
the penalised deviance and factors :math:`L_\theta` at the weights before its last step;
its deviance then carries errors of up to :math:`10^{-6}` that show in its
finite-difference Hessian, see ``tests/test_glmer.py``.)

With :math:`L_\theta L_\theta^\top = \Lambda^\top Z^\top W Z \Lambda + I` at
:math:`\hat u`, the Laplace deviance is

.. math::

    d(\theta, \beta) = -2 \log p(y \mid \hat u) + \|\hat u\|^2 + \log|L_\theta|^2 ,

and :math:`\ell = -d/2`. :math:`\log p(y\mid u)` keeps its constants, as glmer's
``logLik``: :math:`\log\binom{n_i}{y_i}` for binomial data with :math:`n_i` trials, and
:math:`-\log y_i!` for Poisson counts.

For nested factors :math:`\Lambda^\top Z^\top W Z \Lambda + I` is block structured (each
unit couples only to its ancestors) and is factored by block elimination, innermost level
first, vectorised over the units of a level, without fill-in (as
:mod:`allianceflow.models.pls` does for linear models).

Optimisation follows glmer (``nAGQ >= 1``): a first stage optimises θ of the deviance in
which PIRLS updates :math:`u` and :math:`\beta` jointly (glmer's ``nAGQ = 0``); the second
stage optimises :math:`(\theta, \beta)` jointly on the Laplace (or quadrature) deviance,
from the first stage's estimates.

References
----------
Bates, D., Mächler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects
models using lme4. *Journal of Statistical Software, 67*(1), 1–48.
https://doi.org/10.18637/jss.v067.i01
Liu, Q., & Pierce, D. A. (1994). A note on Gauss–Hermite quadrature. *Biometrika, 81*(3),
624–629.
Pinheiro, J. C., & Bates, D. M. (1995). Approximations to the log-likelihood function in
the nonlinear mixed-effects model. *Journal of Computational and Graphical Statistics,
4*(1), 12–35.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import special

from allianceflow.models.design import (
    ModelError,
    check_rank,
    fixed_design,
    missing_by_variable,
    model_rows,
)
from allianceflow.models.distributions import norm_ppf
from allianceflow.models.engine import fit_warnings, single_attempt
from allianceflow.models.formula import FormulaSpec
from allianceflow.models.inference import containment_df, is_singular
from allianceflow.models.inference import round_sig as _r
from allianceflow.models.optimize import fd_hessian, minimize_bounded, newton_decrement
from allianceflow.models.pls import INTERCEPT, factor_codes, levels_from_spec, nesting_order
from allianceflow.models.result import BackendFit, GLMMResult, build_result

__all__ = [
    "FAMILIES",
    "LINKS",
    "GLMMFit",
    "fit_glmm",
    "fit_backend",
    "fit_model_glmm",
    "latent_residual_variance",
    "ratio_rows",
]

#: Families :func:`fit_glmm` fits (``fit_model(family=...)`` also takes "gaussian").
FAMILIES = ("binomial", "poisson")
#: Links per family; the first is the default.
LINKS = {"binomial": ("logit", "probit"), "poisson": ("log",)}

_LOG2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- families


class _Family:
    """Conditional distribution of the response given η: log-density, score, weights."""

    def __init__(self, family: str, link: str, y: np.ndarray, trials: np.ndarray):
        self.family, self.link = family, link
        self.y = y  # successes (binomial) or counts (Poisson)
        self.n = trials  # trials (binomial); ones (Poisson)
        if family == "binomial":
            self.const = special.gammaln(trials + 1) - special.gammaln(y + 1)
            self.const -= special.gammaln(trials - y + 1)
        else:
            self.const = -special.gammaln(y + 1)

    def start_eta(self) -> np.ndarray:
        """η of R's ``mustart`` (binomial: (y + 1/2)/(n + 1); Poisson: y + 1/10)."""
        if self.family == "binomial":
            mu = (self.y + 0.5) / (self.n + 1.0)
            return special.logit(mu) if self.link == "logit" else special.ndtri(mu)
        return np.log(self.y + 0.1)

    def evaluate(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per observation: log p(y | η), its derivative in η and the working weight."""
        y, n = self.y, self.n
        if self.family == "poisson":
            eta = np.minimum(eta, 700.0)
            mu = np.exp(eta)
            return y * eta - mu + self.const, y - mu, mu
        if self.link == "logit":
            # log p = η - softplus(η), log(1 - p) = -softplus(η)
            softplus = np.maximum(eta, 0.0) + np.log1p(np.exp(-np.abs(eta)))
            mu = np.exp(eta - softplus)
            return y * eta - n * softplus + self.const, y - n * mu, n * mu * (1.0 - mu)
        log_p, log_q = special.log_ndtr(eta), special.log_ndtr(-eta)
        log_dens = -0.5 * eta * eta - 0.5 * _LOG2PI
        # φ/Φ and φ/(1-Φ) from logs, stable in both tails
        r1 = np.exp(log_dens - log_p)
        r0 = np.exp(log_dens - log_q)
        score = y * r1 - (n - y) * r0
        weight = n * r1 * r0  # n φ² / (Φ (1 - Φ))
        return y * log_p + (n - y) * log_q + self.const, score, weight


def latent_residual_variance(family: str, link: str, mean_eta: float, var_random: float) -> float:
    r"""The distribution-specific (latent-scale) residual variance of a GLMM.

    Binomial: :math:`\pi^2/3` (logit), 1 (probit), the variance of the standard logistic
    and normal distributions of the latent-variable formulation (Nakagawa & Schielzeth
    2013). Poisson with log link: the log-normal approximation
    :math:`\sigma^2_\varepsilon = \log(1 + 1/\lambda)` with
    :math:`\lambda = \exp(\bar\eta + \tfrac12\sum_l\sigma^2_l)` (the log-normal
    approximation of Nakagawa, Johnson & Schielzeth 2017 for a Poisson response), where
    :math:`\bar\eta` is the mean of the fixed-effects linear predictor (the intercept when
    the predictors are centred) and :math:`\sigma^2_l` the random-effect variances.

    References
    ----------
    Nakagawa, S., Johnson, P. C. D., & Schielzeth, H. (2017). The coefficient of
    determination R² and intra-class correlation coefficient from generalized linear
    mixed-effects models revisited and expanded. *Journal of the Royal Society Interface,
    14*(134), 20170213. https://doi.org/10.1098/rsif.2017.0213
    """
    if family == "binomial":
        return math.pi**2 / 3 if link == "logit" else 1.0
    lam = math.exp(mean_eta + 0.5 * var_random)
    return math.log1p(1.0 / lam)


# --------------------------------------------------------------------------- the problem


@dataclass
class _Block:
    """One level of the elimination: its units, effects and the ancestor of each unit."""

    label: str
    codes: np.ndarray  # (n,) unit of each observation
    m: int
    Z: np.ndarray  # (n, q)
    penalised: bool
    anc: dict = field(default_factory=dict)  # later block index -> (m,) ancestor unit

    @property
    def q(self) -> int:
        return self.Z.shape[1]


def _grouped(codes: np.ndarray, m: int, A: np.ndarray, B: np.ndarray, w: np.ndarray):
    """``out[i, a, b] = sum over rows of unit i of w * A[:, a] * B[:, b]``."""
    out = np.empty((m, A.shape[1], B.shape[1]))
    if m == 1:
        out[0] = (A * w[:, None]).T @ B
        return out
    for a in range(A.shape[1]):
        wa = w * A[:, a]
        for b in range(B.shape[1]):
            out[:, a, b] = np.bincount(codes, weights=wa * B[:, b], minlength=m)
    return out


def _sum_to(idx: np.ndarray, vals: np.ndarray, m: int) -> np.ndarray:
    """Sum the leading axis of *vals* into *m* bins by *idx*."""
    if m == 1:
        return vals.sum(axis=0, keepdims=True)
    flat = vals.reshape(len(vals), -1)
    out = np.empty((m, flat.shape[1]))
    for j in range(flat.shape[1]):
        out[:, j] = np.bincount(idx, weights=flat[:, j], minlength=m)
    return out.reshape((m,) + vals.shape[1:])


def _chol(A: np.ndarray) -> np.ndarray:
    if A.shape[1] == 1:
        if np.any(~(A[:, 0, 0] > 0)):
            raise np.linalg.LinAlgError("not positive definite")
        return np.sqrt(A)
    return np.linalg.cholesky(A)


def _tri_solve(L: np.ndarray, B: np.ndarray, trans: bool = False) -> np.ndarray:
    """Solve ``L X = B`` (or ``L^T X = B``) for a batch of lower-triangular ``L``."""
    if L.shape[1] == 1:
        return B / L
    M = np.swapaxes(L, 1, 2) if trans else L
    return np.linalg.solve(M, B)


class _Problem:
    """The data of a nested GLMM and its deviances as functions of (θ, β)."""

    def __init__(self, levels, codes, Z_cols, X, family: _Family):
        self.levels = levels  # inner to outer
        self.fam = family
        self.X = X
        self.n, self.p = X.shape
        self.blocks: list[_Block] = []
        col = 0
        for lev, c in zip(levels, codes, strict=True):
            Z = np.column_stack(Z_cols[col : col + lev.q])
            col += lev.q
            self.blocks.append(_Block(lev.label, c, int(c.max()) + 1, Z, True))
        for k, bk in enumerate(self.blocks):
            for j in range(k + 1, len(self.blocks)):
                anc = np.zeros(bk.m, dtype=np.int64)
                anc[bk.codes] = self.blocks[j].codes
                bk.anc[j] = anc
        # the fixed effects as a last, unpenalised "level" with one unit (first stage)
        self.beta_block = _Block("(fixed)", np.zeros(self.n, dtype=np.int64), 1, X, False)
        for bk in self.blocks:
            bk.anc[len(self.blocks)] = np.zeros(bk.m, dtype=np.int64)
        # θ: per level, the free entries of the lower triangle of Λ, column-major
        self.theta_slices = []
        self.lower = []
        start = 0
        for lev in levels:
            rows, cols = lev.theta_index
            self.theta_slices.append((slice(start, start + len(rows)), rows, cols))
            self.lower.extend(0.0 if r == c else -np.inf for r, c in zip(rows, cols, strict=True))
            start += len(rows)
        self.n_theta = start
        self.lower = np.asarray(self.lower)
        self.u = [np.zeros((bk.m, bk.q)) for bk in self.blocks]
        self.beta = np.zeros(self.p)
        self.n_evals = 0
        self.step_tol = 1e-10 if family.link == "probit" else 1e-6

    # ------------------------------------------------------------------ pieces
    def lam(self, theta: np.ndarray, k: int) -> np.ndarray:
        sl, rows, cols = self.theta_slices[k]
        q = self.levels[k].q
        L = np.zeros((q, q))
        L[rows, cols] = theta[sl]
        return L

    def theta0(self) -> np.ndarray:
        return np.where(np.isfinite(self.lower), 1.0, 0.0)

    def theta_scale(self) -> np.ndarray:
        """Per θ entry, the RMS of its row's Z column (1 for an intercept)."""
        out = np.ones(self.n_theta)
        for k, (sl, rows, _cols) in enumerate(self.theta_slices):
            rms = np.sqrt(np.mean(self.blocks[k].Z ** 2, axis=0))
            out[sl] = np.where(rms > 0, rms, 1.0)[rows]
        return out

    def _eta(self, beta, lams, u):
        eta = self.X @ beta
        for bk, L, uk in zip(self.blocks, lams, u, strict=True):
            b = uk @ L.T
            if bk.q == 1:
                eta = eta + bk.Z[:, 0] * b[bk.codes, 0]
            else:
                eta = eta + np.einsum("ij,ij->i", bk.Z, b[bk.codes])
        return eta

    def _factor(self, lams, w, joint: bool):
        """Factor Λ'Z'WZΛ + I (and, jointly, the fixed effects' block) by block elimination."""
        blocks = self.blocks + ([self.beta_block] if joint else [])
        mats = lams + ([np.eye(self.p)] if joint else [])
        K = len(blocks)
        diag = []
        cross = {}
        for k, bk in enumerate(blocks):
            D = _grouped(bk.codes, bk.m, bk.Z, bk.Z, w)
            L = mats[k]
            D = np.einsum("ji,mjk,kl->mil", L, D, L)
            if bk.penalised:
                D = D + np.eye(bk.q)
            diag.append(D)
            for j in range(k + 1, K):
                C = _grouped(bk.codes, bk.m, bk.Z, blocks[j].Z, w)
                cross[k, j] = np.einsum("ji,mjk,kl->mil", L, C, mats[j])
        chol, G = [], {}
        logdet = 0.0
        for k, bk in enumerate(blocks):
            Lk = _chol(diag[k])
            chol.append(Lk)
            if bk.penalised:
                logdet += 2.0 * float(np.sum(np.log(np.diagonal(Lk, axis1=1, axis2=2))))
            for j in range(k + 1, K):
                G[k, j] = _tri_solve(Lk, cross[k, j])
            for j in range(k + 1, K):
                idx = bk.anc[j]
                for m2 in range(j, K):
                    upd = np.einsum("mji,mjk->mik", G[k, j], G[k, m2])
                    agg = _sum_to(idx, upd, blocks[j].m)
                    if m2 == j:
                        diag[j] = diag[j] - agg
                    else:
                        cross[j, m2] = cross[j, m2] - agg
        return blocks, chol, G, logdet

    @staticmethod
    def _solve(blocks, chol, G, rhs):
        K = len(blocks)
        r = [x.copy() for x in rhs]
        v = []
        for k, bk in enumerate(blocks):
            vk = _tri_solve(chol[k], r[k][:, :, None])[:, :, 0]
            v.append(vk)
            for j in range(k + 1, K):
                contrib = np.einsum("mji,mj->mi", G[k, j], vk)
                r[j] = r[j] - _sum_to(bk.anc[j], contrib, blocks[j].m)
        x = [None] * K
        for k in range(K - 1, -1, -1):
            t = v[k].copy()
            for j in range(k + 1, K):
                t = t - np.einsum("mij,mj->mi", G[k, j], x[j][blocks[k].anc[j]])
            x[k] = _tri_solve(chol[k], t[:, :, None], trans=True)[:, :, 0]
        return x

    # ------------------------------------------------------------------ PIRLS
    def pirls(self, theta, beta, *, joint: bool, tol: float = 1e-22, maxit: int = 200):
        """Conditional modes (and, jointly, β) at θ by penalised IRLS; the fit's pieces.

        Returns a dict with ``u, beta, eta, loglik`` (summed log p(y|u)), ``sqr_u``,
        ``logdet`` (log|L|² over the random effects), ``factor`` and ``ok``.
        """
        lams = [self.lam(theta, k) for k in range(len(self.blocks))]
        u = [x.copy() for x in self.u]
        beta = np.array(self.beta if joint else beta, dtype=float)
        fam = self.fam

        def penalised(u_, b_):
            eta_ = self._eta(b_, lams, u_)
            ll, s, w = fam.evaluate(eta_)
            sqr = float(sum(np.sum(x * x) for x in u_))
            return -2.0 * float(np.sum(ll)) + sqr, eta_, ll, s, w, sqr

        pdev, eta, ll, s, w, sqr = penalised(u, beta)
        if not math.isfinite(pdev):
            u = [np.zeros_like(x) for x in u]
            pdev, eta, ll, s, w, sqr = penalised(u, beta)
        ok = False
        restarted = False
        for _ in range(maxit):
            try:
                blocks, chol, G, logdet = self._factor(lams, w, joint)
            except np.linalg.LinAlgError:
                break
            rhs = []
            for k, bk in enumerate(self.blocks):
                g = _grouped(bk.codes, bk.m, bk.Z, np.ones((self.n, 1)), s)[:, :, 0]
                rhs.append(g @ lams[k] - u[k])
            if joint:
                rhs.append((self.X.T @ s)[None, :])
            delta = self._solve(blocks, chol, G, rhs)
            decrement = float(sum(np.sum(a * b) for a, b in zip(rhs, delta, strict=True)))
            t = 1.0
            moved = False
            while t > 1e-10:
                u_new = [x + t * d for x, d in zip(u, delta, strict=False)]
                b_new = beta + t * delta[-1][0] if joint else beta
                cand = penalised(u_new, b_new)
                if math.isfinite(cand[0]) and cand[0] <= pdev + 1e-12 * max(1.0, abs(pdev)):
                    moved = True
                    break
                t /= 2
            if not moved:
                if decrement < 1e-8:
                    ok = True
                    break
                if restarted:
                    break
                restarted = True
                u = [np.zeros_like(x) for x in u]
                pdev, eta, ll, s, w, sqr = penalised(u, beta)
                continue
            u, beta = u_new, b_new
            pdev, eta, ll, s, w, sqr = cand
            # a full step that small leaves u within ~1e-10 of the mode, enough for the
            # log-determinant too: Newton's method (canonical links) converges
            # quadratically, Fisher scoring (probit) only linearly
            step_size = max(float(np.max(np.abs(d))) if d.size else 0.0 for d in delta)
            if t == 1.0 and (step_size < self.step_tol or decrement < tol):
                ok = True
                break
        # the factor at the final weights (the step taken last is below tolerance)
        try:
            blocks, chol, G, logdet = self._factor(lams, w, joint)
        except np.linalg.LinAlgError:
            ok = False
            logdet = float("nan")
            blocks, chol, G = None, None, None
        if ok:
            self.u = u
            if joint:
                self.beta = beta
        self.n_evals += 1
        return {
            "u": u,
            "beta": beta,
            "eta": eta,
            "loglik": float(np.sum(ll)),
            "sqr_u": sqr,
            "logdet": logdet,
            "factor": (blocks, chol, G),
            "lams": lams,
            "ok": ok,
        }

    # ------------------------------------------------------------------ deviances
    def deviance0(self, theta) -> float:
        """First-stage deviance (glmer's nAGQ = 0): PIRLS over u and β jointly."""
        sol = self.pirls(theta, None, joint=True)
        if not sol["ok"]:
            return float("inf")
        return -2.0 * sol["loglik"] + sol["sqr_u"] + sol["logdet"]

    def deviance(self, theta, beta, n_agq: int = 1) -> float:
        """Laplace (``n_agq`` = 1) or adaptive Gauss–Hermite deviance at (θ, β)."""
        sol = self.pirls(theta, beta, joint=False)
        if not sol["ok"]:
            return float("inf")
        if n_agq == 1:
            return -2.0 * sol["loglik"] + sol["sqr_u"] + sol["logdet"]
        return self._agq(sol, beta, n_agq)

    def _agq(self, sol, beta, n_agq) -> float:
        r"""Adaptive Gauss–Hermite deviance for one scalar random effect.

        Per unit *j*, with mode :math:`\hat u_j`, :math:`\sigma_j = 1/L_{jj}` and
        :math:`g_j(u) = \sum_{i\in j}\log p(y_i\mid u) - u^2/2 - \tfrac12\log 2\pi`:
        :math:`\log\int e^{g_j} \approx \log\sigma_j +
        \log\sum_k w_k \exp\{g_j(\hat u_j + \sigma_j z_k) - \log\phi(z_k)\}` with the
        nodes :math:`z_k` and weights :math:`w_k` (summing to 1) of the Gauss–Hermite rule
        for the standard normal (lme4's ``GHrule``).
        """
        bk = self.blocks[0]
        lam = float(sol["lams"][0][0, 0])
        chol = sol["factor"][1][0][:, 0, 0]
        sd = 1.0 / chol
        u_hat = sol["u"][0][:, 0]
        z, w = np.polynomial.hermite_e.hermegauss(n_agq)
        w = w / math.sqrt(2 * math.pi)
        ldnorm = -0.5 * z * z - 0.5 * _LOG2PI
        fixed = self.X @ beta
        zcol = bk.Z[:, 0]
        terms = np.empty((bk.m, n_agq))
        for k in range(n_agq):
            uk = u_hat + sd * z[k]
            ll, _, _ = self.fam.evaluate(fixed + zcol * lam * uk[bk.codes])
            g = np.bincount(bk.codes, weights=ll, minlength=bk.m) - 0.5 * uk * uk - 0.5 * _LOG2PI
            terms[:, k] = g - ldnorm[k] + math.log(w[k])
        log_int = np.log(sd) + special.logsumexp(terms, axis=1)
        return -2.0 * float(np.sum(log_int))

    def beta_only_cov(self, theta, beta) -> np.ndarray:
        r"""Covariance of β conditional on θ, from the penalised least-squares system.

        :math:`(X^\top W X - X^\top W Z\Lambda
        (\Lambda^\top Z^\top W Z\Lambda + I)^{-1}\Lambda^\top Z^\top W X)^{-1}` at the
        conditional modes (lme4's ``vcov(, use.hessian = FALSE)``, from :math:`R_X`).
        """
        sol = self.pirls(theta, beta, joint=False)
        lams = sol["lams"]
        _, _, w = self.fam.evaluate(sol["eta"])
        blocks, chol, G, _ = self._factor(lams, w, joint=True)
        Rx = chol[-1][0]
        inv = np.linalg.inv(Rx)
        return inv.T @ inv


# --------------------------------------------------------------------------- the fit


@dataclass
class GLMMFit:
    r"""Result of :func:`fit_glmm`.

    Attributes
    ----------
    formula, family, link : str
    n_agq : int
    n_obs : int
    n_groups : dict
        Units per grouping factor label.
    fixed_names : list of str
    fe_params : ndarray
    cov_fe : ndarray
        Covariance of :math:`\hat\beta` (``vcov`` as chosen, see :func:`fit_glmm`).
    cov_fe_beta_only : ndarray
        Covariance of :math:`\hat\beta` conditional on θ.
    vcov : str
        ``"hessian"`` or ``"beta_only"``: which of the two ``cov_fe`` is.
    cov_re : dict
        Per grouping factor label, the covariance matrix :math:`\Lambda\Lambda^\top` of its
        effects (a DataFrame), on the linear predictor's scale.
    theta : ndarray
    loglik, deviance : float
    n_params : int
        Fixed effects + covariance parameters (glmer's ``df`` of ``logLik``).
    ranef : dict
        Per grouping factor label, a DataFrame of the conditional modes (one column per
        effect) and, for the outermost factor, their conditional SDs (``se_<effect>``).
    var_fixed : float
    mean_eta : float
        Mean of the fixed-effects linear predictor.
    level_variance : dict
    converged, optimizer, n_evaluations, max_abs_gradient, newton_decrement,
    hessian_positive_definite, boundary, warnings
        The convergence record.
    design : DataFrame
        The fixed-effects design (one column per term, the rows as given).
    """

    formula: str
    family: str
    link: str
    n_agq: int
    n_obs: int
    n_groups: dict
    fixed_names: list
    fe_params: np.ndarray
    cov_fe: np.ndarray
    cov_fe_beta_only: np.ndarray
    vcov: str
    cov_re: dict
    theta: np.ndarray
    loglik: float
    deviance: float
    n_params: int
    ranef: dict
    var_fixed: float
    mean_eta: float
    level_variance: dict
    converged: bool
    optimizer: str
    n_evaluations: int
    max_abs_gradient: float
    newton_decrement: float
    hessian_positive_definite: bool
    boundary: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    design: pd.DataFrame | None = None

    @property
    def bse(self) -> np.ndarray:
        """Standard errors of the fixed effects."""
        return np.sqrt(np.diag(self.cov_fe))


def _response(rows: pd.DataFrame, spec: FormulaSpec, family: str):
    """Successes and trials (binomial) or counts (Poisson), validated."""
    if spec.cbind is not None:
        if family != "binomial":
            raise ModelError(
                f"`formula` {spec.formula!r}: a cbind(successes, failures) response is for "
                f"family='binomial'; got family={family!r}."
            )
        s = rows[spec.cbind[0]].to_numpy(dtype=float)
        f = rows[spec.cbind[1]].to_numpy(dtype=float)
        for name, v in zip(spec.cbind, (s, f), strict=True):
            bad = np.flatnonzero((v < 0) | (v != np.round(v)))
            if bad.size:
                raise ModelError(
                    f"`formula` {spec.formula!r}: the column {name!r} of cbind() must hold "
                    f"non-negative whole counts; row {int(bad[0])} of the model rows has "
                    f"{v[bad[0]]!r}. Fix the counts or the column named."
                )
        return s, s + f
    y = pd.to_numeric(rows[spec.response], errors="coerce")
    if y.isna().any():
        bad = int(np.flatnonzero(y.isna().to_numpy())[0])
        raise ModelError(
            f"`formula` {spec.formula!r}: the response {spec.response!r} must be numeric for "
            f"family={family!r}; row {bad} of the model rows has {rows[spec.response].iloc[bad]!r}."
        )
    y = y.to_numpy(dtype=float)
    if family == "binomial":
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            raise ModelError(
                f"`formula` {spec.formula!r}: a binomial response must be 0/1 (or "
                f"cbind(successes, failures)); the column {spec.response!r} has "
                f"{y[bad[0]]!r} in row {int(bad[0])} of the model rows. Recode it to 0/1, "
                "or write the response as cbind(successes, failures)."
            )
        return y, np.ones_like(y)
    bad = np.flatnonzero((y < 0) | (y != np.round(y)))
    if bad.size:
        raise ModelError(
            f"`formula` {spec.formula!r}: a Poisson response must be a non-negative whole "
            f"count; the column {spec.response!r} has {y[bad[0]]!r} in row {int(bad[0])} of "
            "the model rows."
        )
    return y, np.ones_like(y)


def _check_response_varies(rows: pd.DataFrame, spec: FormulaSpec, family: str) -> None:
    """Refuse a response without information: all 0, all 1 (binomial) or all 0 counts."""
    if spec.cbind is not None:
        s, f = (rows[c].to_numpy(dtype=float) for c in spec.cbind)
        if s.sum() > 0 and f.sum() > 0:
            return
        what = "no successes" if s.sum() == 0 else "no failures"
    else:
        y = pd.to_numeric(rows[spec.response], errors="coerce")
        if family == "binomial" and y.nunique() > 1:
            return
        if family == "poisson" and (y > 0).any():
            return
        what = f"the single value {y.iloc[0]:g}"
    raise ModelError(
        f"`formula` {spec.formula!r}: the response has {what} in all {len(rows)} complete "
        f"rows, so a {family} model cannot be estimated (its intercept would be infinite). "
        "Check the outcome column and the rows kept."
    )


def _glm_start(X, fam: _Family, maxit: int = 50) -> np.ndarray:
    """β of the GLM without random effects, by IRLS from R's ``mustart`` (glmer's start)."""
    eta = fam.start_eta()
    beta = np.linalg.lstsq(X, eta, rcond=None)[0]
    eta = X @ beta
    ll, s, w = fam.evaluate(eta)
    dev = -2 * float(np.sum(ll))
    for _ in range(maxit):
        step = np.linalg.solve((X * w[:, None]).T @ X, X.T @ s)
        t = 1.0
        while t > 1e-8:
            cand = beta + t * step
            ll, s2, w2 = fam.evaluate(X @ cand)
            if -2 * float(np.sum(ll)) <= dev + 1e-12 * abs(dev):
                break
            t /= 2
        beta, s, w = cand, s2, w2
        new = -2 * float(np.sum(ll))
        if abs(dev - new) < 1e-10 * (abs(new) + 0.1):
            break
        dev = new
    return beta


def _prepare(rows: pd.DataFrame, spec: FormulaSpec, family: str):
    levels = levels_from_spec(spec)
    nested = nesting_order(rows, levels)
    if nested is None:
        raise ModelError(
            f"`formula` {spec.formula!r}: the grouping factors "
            f"{[lev.label for lev in levels]} are crossed (some level of one occurs within "
            "more than one level of another); generalised linear mixed models are fitted for "
            "nested factors only. Give inner units ids unique across outer units "
            "(e.g. '(1 | therapist/patient)') if they are in fact nested, or drop one factor."
        )
    levels, codes = nested
    X = fixed_design(spec, rows)  # patsy's columns and names, without patsy when simple
    fixed_names = list(X.columns)
    # row-major, as patsy's matrix was: the same sums in the same order, the same fit
    Xv = np.ascontiguousarray(X.to_numpy(dtype=float))
    check_rank(Xv, fixed_names)
    y, trials = _response(rows, spec, family)
    Z_cols = []
    for lev in levels:
        for eff in lev.effects:
            Z_cols.append(np.ones(len(rows)) if eff == INTERCEPT else rows[eff].to_numpy(float))
    design = pd.DataFrame(Xv, columns=fixed_names)
    return levels, codes, Xv, fixed_names, y, trials, Z_cols, design


def fit_glmm(
    rows: pd.DataFrame,
    spec: FormulaSpec,
    *,
    family: Literal["binomial", "poisson"] = "binomial",
    link: str | None = None,
    n_agq: int = 1,
    vcov: Literal["hessian", "beta_only"] = "hessian",
    tol: float = 1e-7,
    boundary_tol: float = 1e-4,
    maxiter: int = 1000,
) -> GLMMFit:
    r"""Fit a nested GLMM to complete *rows* by Laplace or adaptive Gauss–Hermite quadrature.

    Parameters
    ----------
    rows : DataFrame
        The model's complete rows (:func:`allianceflow.models.design.model_rows`).
    spec : FormulaSpec
        The parsed formula; its grouping factors must be nested in one another.
    family : {"binomial", "poisson"}
    link : str, optional
        Binomial: "logit" (default) or "probit"; Poisson: "log".
    n_agq : int, default 1
        1: the Laplace approximation (glmer's default). 2 to 25: adaptive Gauss–Hermite
        quadrature with that many nodes, for a model with a single scalar random effect
        (one grouping factor, random intercept only), as glmer allows.
    vcov : {"hessian", "beta_only"}, default "hessian"
        "hessian": glmer's default ``vcov``: twice the fixed-effects block of the inverse of
        the finite-difference Hessian of the deviance in (θ, β) jointly (θ at the zero bound
        held fixed there). "beta_only": the covariance of β conditional on θ, from the
        penalised weighted least-squares system at the conditional modes (glmer's
        ``vcov(use.hessian = FALSE)``); it ignores the uncertainty of θ and differs by
        0.1–6% in SE on typical data. When the Hessian is not positive definite, the
        β-only covariance is used and a warning says so, as glmer does.
    tol : float, default 1e-7
        Convergence: the predicted deviance gain of one more Newton step.
    boundary_tol : float, default 1e-4
        A diagonal θ (a random-effect SD on the linear predictor's scale) below this is a
        singular fit.
    maxiter : int, default 1000

    Returns
    -------
    GLMMFit

    Raises
    ------
    ModelError
        Crossed grouping factors; a response that is not 0/1 (binomial), not counts
        (Poisson) or not whole non-negative counts in cbind(); quadrature asked for with
        more than one random effect; a rank-deficient fixed design.
    ValueError
        A link the family does not have; ``n_agq`` outside 1..25; an unknown ``vcov``.
    """
    if family not in FAMILIES:
        raise ValueError(f"`family` must be 'binomial' or 'poisson'; got {family!r}.")
    link = LINKS[family][0] if link is None else link
    if link not in LINKS[family]:
        allowed = " or ".join(repr(x) for x in LINKS[family])
        raise ValueError(f"`link` for family={family!r} must be {allowed}; got {link!r}.")
    if (
        isinstance(n_agq, bool)
        or not isinstance(n_agq, (int, np.integer))
        or not (1 <= n_agq <= 25)
    ):
        raise ValueError(f"`nAGQ` must be a whole number from 1 to 25; got {n_agq!r}.")
    if vcov not in ("hessian", "beta_only"):
        raise ValueError(f"`vcov` must be 'hessian' or 'beta_only'; got {vcov!r}.")
    levels, codes, X, fixed_names, y, trials, Z_cols, design = _prepare(rows, spec, family)
    if n_agq > 1 and (len(levels) != 1 or levels[0].q != 1):
        raise ModelError(
            f"`formula` {spec.formula!r}: adaptive Gauss–Hermite quadrature (nAGQ = {n_agq}) "
            "needs a single scalar random effect (one grouping factor with a random intercept "
            "only), as in glmer; fit this model with nAGQ = 1 (the Laplace approximation)."
        )

    def run() -> GLMMFit:
        fam = _Family(family, link, y, trials)
        prob = _Problem(levels, codes, Z_cols, X, fam)
        prob.beta = _glm_start(X, fam)
        s_theta = prob.theta_scale()
        s_beta = np.sqrt(np.mean(X**2, axis=0))
        s_beta = np.where(s_beta > 0, s_beta, 1.0)
        nt = prob.n_theta

        # stage 1: θ on the deviance with u and β updated jointly (glmer's nAGQ = 0)
        memo0: dict[bytes, float] = {}

        def f0(phi):
            key = np.asarray(phi, dtype=float).tobytes()
            if key not in memo0:
                memo0[key] = prob.deviance0(phi / s_theta)
            return memo0[key]

        opt0 = minimize_bounded(
            f0,
            prob.theta0(),
            prob.lower,
            unscale=s_theta,
            boundary_tol=boundary_tol,
            tol=1e-4,
            maxiter=maxiter,
            theta_slices=prob.theta_slices,
            rounds=2,
        )
        theta1 = opt0.x / s_theta
        sol0 = prob.pirls(theta1, None, joint=True)
        beta1 = sol0["beta"]

        # stage 2: (θ, β) jointly on the Laplace / quadrature deviance
        scale = np.concatenate([s_theta, s_beta])
        lower = np.concatenate([prob.lower, np.full(len(beta1), -np.inf)])
        memo: dict[bytes, float] = {}

        def f(x):
            key = np.asarray(x, dtype=float).tobytes()
            if key not in memo:
                par = x / scale
                memo[key] = prob.deviance(par[:nt], par[nt:], n_agq)
            return memo[key]

        x0 = np.concatenate([theta1 * s_theta, beta1 * s_beta])
        opt = minimize_bounded(
            f,
            x0,
            lower,
            unscale=scale,
            boundary_tol=boundary_tol,
            tol=tol,
            maxiter=maxiter,
            theta_slices=prob.theta_slices,
        )
        x = opt.x
        par = x / scale
        theta, beta = par[:nt], par[nt:]
        dev = f(x)
        warn: list[str] = []
        on_bound = opt.on_bound
        g_full = opt.gradient
        max_grad = float(np.max(np.abs((g_full * scale)[~on_bound]))) if (~on_bound).any() else 0.0
        converged = bool(
            opt.hessian_positive_definite
            and math.isfinite(opt.decrement)
            and opt.decrement < tol
            and opt.kkt_ok
            and math.isfinite(dev)
        )
        if not opt.hessian_positive_definite:
            warn.append(
                "the deviance is not curved at the solution (finite-difference Hessian of the free "
                "parameters not positive definite): the optimum is not unique."
            )
        if not converged:
            warn.append(
                f"convergence check failed (Newton decrement {opt.decrement:.3g}, tolerance "
                f"{tol:g}; KKT at the boundary {'ok' if opt.kkt_ok else 'violated'}); do not "
                "report these estimates."
            )

        # covariance of β
        cov_beta_only = prob.beta_only_cov(theta, beta)
        free = ~on_bound
        cov_hess = None
        H = fd_hessian(f, x, free)
        pd_ok, _ = newton_decrement(np.zeros(H.shape[0]), H)
        if pd_ok:
            inv = np.linalg.inv(H)
            idx_beta = np.flatnonzero(free)
            beta_pos = [i for i, j in enumerate(idx_beta) if j >= nt]
            Vs = inv[np.ix_(beta_pos, beta_pos)]
            Vs = Vs + Vs.T  # 2 H^-1, symmetrised (lme4's calc.vcov.hess)
            cov_hess = Vs / np.outer(s_beta, s_beta)
            if np.linalg.eigvalsh(cov_hess).min() <= 0:
                cov_hess = None
        if vcov == "hessian" and cov_hess is None:
            warn.append(
                "the covariance of the fixed effects from the finite-difference Hessian of the "
                "deviance is not positive definite; the covariance conditional on the variance "
                "parameters (vcov='beta_only') is reported instead, as glmer does."
            )
        use = "hessian" if (vcov == "hessian" and cov_hess is not None) else "beta_only"
        cov_fe = cov_hess if use == "hessian" else cov_beta_only

        # random effects, boundary, conditional modes at the optimum
        sol = prob.pirls(theta, beta, joint=False)
        n = prob.n
        cov_re: dict[str, pd.DataFrame] = {}
        boundary: list[str] = []
        level_variance: dict[str, float] = {}
        ranef: dict[str, pd.DataFrame] = {}
        blocks, chol, _G = sol["factor"]
        K = len(prob.blocks)
        for k, lev in enumerate(levels):
            Lam = prob.lam(theta, k)
            cov = Lam @ Lam.T
            cov_re[lev.label] = pd.DataFrame(
                cov, index=list(lev.effects), columns=list(lev.effects)
            )
            for j, eff in enumerate(lev.effects):
                if abs(Lam[j, j]) < boundary_tol:
                    boundary.append(f"{eff} | {lev.label}")
            if (
                lev.q > 1
                and not any(abs(Lam[j, j]) < boundary_tol for j in range(lev.q))
                and lev.pattern[np.tril_indices(lev.q, -1)].any()
                and is_singular(cov, 1.0, boundary_tol)
            ):
                boundary.append(f"correlation | {lev.label}")
            Zl = prob.blocks[k].Z
            level_variance[lev.label] = float(np.mean(np.sum((Zl @ cov) * Zl, axis=1)))
            _, lab = factor_codes(rows, lev.factor)
            frame = lab.reset_index(drop=True)
            b = sol["u"][k] @ Lam.T
            for j, eff in enumerate(lev.effects):
                frame[eff] = b[:, j]
            if k == K - 1 and chol is not None:
                # outermost level: its block of (Λ'Z'WZΛ + I)^-1 is (L_K L_K')^-1 exactly
                Linv = _tri_solve(chol[k], np.broadcast_to(np.eye(lev.q), chol[k].shape).copy())
                cvar = np.einsum("ij,mkj,mkl,il->mi", Lam, Linv, Linv, Lam)
                for j, eff in enumerate(lev.effects):
                    frame[f"se_{eff}"] = np.sqrt(cvar[:, j])
            ranef[lev.label] = frame
        if boundary:
            warn.append(
                "singular fit: random-effect variance at the boundary for "
                + ", ".join(boundary)
                + "; the model is over-parameterised for these data."
            )
        fixed_pred = X @ beta
        order = [lev.label for lev in levels_from_spec(spec)]
        n_groups = {lev.label: prob.blocks[k].m for k, lev in enumerate(levels)}
        return GLMMFit(
            formula=spec.formula,
            family=family,
            link=link,
            n_agq=int(n_agq),
            n_obs=int(n),
            n_groups={g: n_groups[g] for g in order},
            fixed_names=fixed_names,
            fe_params=beta,
            cov_fe=cov_fe,
            cov_fe_beta_only=cov_beta_only,
            vcov=use,
            cov_re={g: cov_re[g] for g in order},
            theta=theta,
            loglik=-0.5 * dev,
            deviance=dev,
            n_params=int(len(beta) + nt),
            ranef={g: ranef[g] for g in order},
            var_fixed=float(np.var(fixed_pred, ddof=1)) if n > 1 else 0.0,
            mean_eta=float(np.mean(fixed_pred)),
            level_variance={g: level_variance[g] for g in order},
            converged=converged,
            optimizer=f"{opt0.optimizer} (nAGQ=0), then {opt.optimizer}",
            n_evaluations=int(prob.n_evals),
            max_abs_gradient=max_grad,
            newton_decrement=float(opt.decrement),
            hessian_positive_definite=bool(opt.hessian_positive_definite),
            boundary=boundary,
            warnings=warn,
            design=design,
        )

    advice = (
        "This is complete or quasi-complete separation: a predictor, or a combination of "
        "predictors, predicts the outcome perfectly in part of the data. Cross-tabulate the "
        "outcome with each predictor, then drop or merge the predictor (or categories) at fault."
    )
    if family == "binomial" and separated(X, y, trials):
        raise ModelError(
            f"`formula` {spec.formula!r}: the {family} likelihood of these {len(rows)} rows has "
            "no finite maximum in the fixed effects (a direction of the fixed effects "
            f"classifies every row without error; Konis 2007). {advice}"
        )
    try:
        return run()
    except np.linalg.LinAlgError as err:
        raise ModelError(
            f"`formula` {spec.formula!r}: the {family} likelihood of these {len(rows)} rows has "
            "no finite maximum in the fixed effects (the weighted cross-products became "
            f"singular as an estimate ran off to infinity). {advice}"
        ) from err


def separated(X: np.ndarray, y: np.ndarray, trials: np.ndarray) -> bool:
    r"""Whether binomial data are completely or quasi-completely separated by *X*.

    The maximum-likelihood estimate of a logistic (or probit) regression exists only if no
    direction :math:`\beta \ne 0` has :math:`s_i x_i^\top\beta \ge 0` for every row that is
    all successes (:math:`s_i = 1`) or all failures (:math:`s_i = -1`) and
    :math:`x_i^\top\beta = 0` for every row with both (Albert & Anderson 1984; Santner &
    Duffy 1986). Konis's linear program finds such a direction: maximise
    :math:`\sum_i s_i x_i^\top\beta` under those constraints with
    :math:`-1 \le \beta_j \le 1`; for a full-rank *X* the data are separated exactly when the
    maximum is positive (Konis 2007, the method of R's ``detectseparation``). Random
    effects are penalised, so separation by the fixed effects leaves the Laplace likelihood
    without a finite maximum too.

    References
    ----------
    Albert, A., & Anderson, J. A. (1984). On the existence of maximum likelihood estimates
    in logistic regression models. *Biometrika, 71*(1), 1–10.
    Konis, K. (2007). *Linear programming algorithms for detecting separated data in binary
    logistic regression models* (DPhil thesis). University of Oxford.

    Examples
    --------
    >>> X = np.column_stack([np.ones(4), [-2.0, -1.0, 1.0, 2.0]])
    >>> separated(X, np.array([0.0, 0.0, 1.0, 1.0]), np.ones(4))
    True
    >>> separated(X, np.array([0.0, 1.0, 0.0, 1.0]), np.ones(4))
    False
    """
    from scipy.optimize import linprog

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    trials = np.asarray(trials, dtype=float)
    pure = (y == 0) | (y == trials)
    sign = np.where(y == trials, 1.0, -1.0)[pure]
    A = X[pure] * sign[:, None]
    mixed = X[~pure]
    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)  # columns on one scale for the bounds
    A, mixed = A / scale, mixed / scale
    result = linprog(
        -A.sum(axis=0),
        A_ub=-A if len(A) else None,
        b_ub=np.zeros(len(A)) if len(A) else None,
        A_eq=mixed if len(mixed) else None,
        b_eq=np.zeros(len(mixed)) if len(mixed) else None,
        bounds=[(-1.0, 1.0)] * X.shape[1],
        method="highs",
    )
    return bool(result.status == 0 and -result.fun > 1e-7 * max(1.0, len(A)))


def ratio_rows(names, beta, se, label: str | None) -> list[dict]:
    """``term, ratio, ci_low, ci_high``: exp of the estimate and of its Wald 95% CI.

    A bound beyond the largest float (log ratio above about 709, as with a huge SE near
    separation) is not finite and is stored as None (null in the JSON), instead of
    raising an OverflowError.

    Examples
    --------
    >>> ratio_rows(["x"], [0.0], [1000.0], "OR")
    [{'term': 'x', 'ratio': 1.0, 'ci_low': 0.0, 'ci_high': None}]
    """
    if label is None:
        return []
    z = norm_ppf(0.975)

    def _exp(x: float) -> float:
        return math.exp(x) if x < 709.0 else math.inf

    rows = []
    for t, b, s in zip(names, beta, se, strict=True):
        rows.append(
            {
                "term": t,
                "ratio": _r(_exp(b)),
                "ci_low": _r(_exp(b - z * s)),
                "ci_high": _r(_exp(b + z * s)),
            }
        )
    return rows


def fit_backend(
    rows: pd.DataFrame,
    spec: FormulaSpec,
    *,
    family: str,
    link: str | None,
    n_agq: int,
    vcov: str,
    boundary_tol: float,
) -> tuple[BackendFit, dict]:
    """Fit *rows* with :func:`fit_glmm` for :func:`allianceflow.models.fit_model`.

    Returns the :class:`~allianceflow.models.result.BackendFit` (with the latent residual
    variance as ``sigma2``, so that ICC and R² are on the latent scale) and the GLMM's own
    record keys (family, link, nAGQ, ratios, ...).
    """
    fit = fit_glmm(
        rows,
        spec,
        family=family,
        link=link,
        n_agq=n_agq,
        vcov=vcov,
        boundary_tol=boundary_tol,
    )
    exog = fit.design
    order = [t.label for t in spec.random]
    random, covs = [], []
    for group in dict.fromkeys(order):
        cov = fit.cov_re[group]
        for i, t in enumerate(cov.index):
            random.append((group, t, float(cov.iloc[i, i])))
        for rt in spec.random:
            if rt.label != group or not rt.correlated or len(rt.effects) < 2:
                continue
            effects = list(rt.effects)
            for i in range(len(effects)):
                for j in range(i + 1, len(effects)):
                    a, b = effects[i], effects[j]
                    den = math.sqrt(max(cov.loc[a, a], 0) * max(cov.loc[b, b], 0))
                    covs.append((group, a, b, float(cov.loc[a, b]), den))
    sigma2 = latent_residual_variance(
        fit.family, fit.link, fit.mean_eta, float(sum(fit.level_variance.values()))
    )
    # conditional modes of the outermost factor (the one with conditional SDs)
    modes = []
    outer = list(fit.ranef)[-1] if fit.ranef else None
    for label, frame in fit.ranef.items():
        if any(str(c).startswith("se_") for c in frame.columns):
            outer = label
    if outer is not None and len(fit.ranef[outer]) <= 5000:
        frame = fit.ranef[outer]
        k = len(outer.split(":"))
        terms = [c for c in frame.columns[k:] if not str(c).startswith("se_")]
        level = frame[list(frame.columns[:k])].astype(str).agg(":".join, axis=1)
        frame = frame.assign(_level=level).sort_values("_level", kind="mergesort")
        for _, row in frame.iterrows():
            for t in terms:
                modes.append((outer, row["_level"], t, float(row[t]), float(row[f"se_{t}"])))
    warnings_ = fit_warnings(fit)
    backend = BackendFit(
        engine="allianceflow.glmm",
        n_obs=int(fit.n_obs),
        n_groups={g: int(fit.n_groups[g]) for g in dict.fromkeys(order)},
        fixed_names=list(fit.fixed_names),
        beta=fit.fe_params,
        cov_fe=fit.cov_fe,
        df=containment_df(rows, list(spec.factors), exog),
        df_default=float(fit.n_obs - len(fit.fixed_names)),
        sigma2=float(sigma2),
        random=random,
        covariances=covs,
        level_variance=fit.level_variance,
        group_order=order,
        var_fixed=fit.var_fixed,
        loglik=fit.loglik,
        n_params=int(fit.n_params),
        conditional_modes=modes,
        converged=bool(fit.converged),
        optimizer=fit.optimizer,
        attempts=single_attempt(fit),
        max_abs_gradient=fit.max_abs_gradient,
        hessian_positive_definite=bool(fit.hessian_positive_definite),
        boundary=list(fit.boundary),
        warnings=warnings_,
    )
    label = {"logit": "odds ratio", "log": "rate ratio"}.get(fit.link)
    ses_beta_only = np.sqrt(np.diag(fit.cov_fe_beta_only))
    extra = {
        "family": fit.family,
        "link": fit.link,
        "nAGQ": fit.n_agq,
        "vcov_method": fit.vcov,
        "se_beta_only": {t: _r(s) for t, s in zip(fit.fixed_names, ses_beta_only, strict=True)},
        "ratio_type": label,
        "ratios": ratio_rows(fit.fixed_names, fit.fe_params, fit.bse, label),
        "latent_residual_variance": _r(sigma2),
        "icc_scale": "latent",
    }
    return backend, extra


def fit_model_glmm(
    data: pd.DataFrame,
    formula: str | FormulaSpec,
    *,
    family: Literal["binomial", "poisson"] = "binomial",
    link: str | None = None,
    nAGQ: int = 1,  # noqa: N803 -- lme4's name
    vcov: Literal["hessian", "beta_only"] = "hessian",
    name: str = "model",
    boundary_tol: float = 1e-4,
    min_levels: int = 5,
) -> GLMMResult:
    r"""Fit a GLMM written in lme4 syntax, as ``glmer``; ``fit_model(family=...)`` calls this.

    Parameters
    ----------
    data : DataFrame
        One row per observation; rows with a missing value in a model variable are dropped
        and counted, as for linear models.
    formula : str or FormulaSpec
        lme4 formula. Binomial response: a 0/1 column, or ``cbind(successes, failures)``
        of two count columns; Poisson: a count column. Random terms as for linear models;
        the grouping factors must be nested in one another (crossed factors raise
        :class:`~allianceflow.models.formula.ModelError`). A categorical predictor's
        reference level is its first level in sorted order, as R's.
    family : {"binomial", "poisson"}
    link : str, optional
        Binomial "logit" (default) or "probit"; Poisson "log".
    nAGQ : int, default 1
        1: Laplace; 2-25: adaptive Gauss–Hermite quadrature (single scalar random effect).
    vcov : {"hessian", "beta_only"}, default "hessian"
        See :func:`fit_glmm`.
    name : str
    boundary_tol : float
    min_levels : int, default 5
        Grouping factors with fewer levels lose their random terms, with a warning, as
        in :func:`allianceflow.models.fit_model`.

    Returns
    -------
    GLMMResult
        The linear model's keys (see :func:`allianceflow.models.fit_model`; ``reml`` is
        False, ``fixed`` holds Wald z rows, ``residual_variance`` is the latent-scale
        residual variance, ``icc``, ``r2_marginal`` and ``r2_conditional`` are on the
        latent scale) and, after them, ``family, link, nAGQ, vcov_method, se_beta_only,
        ratio_type, ratios, latent_residual_variance, icc_scale``.

    Notes
    -----
    The likelihood, PIRLS and the two optimisation stages are described in
    :mod:`allianceflow.models.glmm`. ``loglik`` includes the constants, as glmer's
    ``logLik``; AIC and BIC count the fixed effects and covariance parameters. With
    ``nAGQ > 1`` the constants are kept too, so that log-likelihoods at different nAGQ
    can be compared; glmer's quadrature deviance sums deviance residuals instead, so its
    ``logLik`` for nAGQ > 1 leaves out the saturated model's log-likelihood (nothing for
    0/1 data; on lme4's ``cbpp`` with nAGQ = 5 glmer reports -50.01, which is our -91.98
    less the saturated log-likelihood).

    *Singular fits.* A variance at the zero bound is held there: the Hessian is taken over
    the other parameters (glmer's finite-difference Hessian breaks down at the bound and it
    falls back to the β-only covariance, which at θ = 0 is the same matrix).

    *Standard errors* are glmer's default: from the finite-difference Hessian of the
    deviance in (θ, β) jointly (:math:`V = 2H^{-1}`, the β block), which accounts for the
    estimation of θ; ``se_beta_only`` gives the SEs conditional on θ
    (``vcov="beta_only"`` reports those instead).

    *Ratios.* Odds ratios (logit) and rate ratios (log link): :math:`e^{\hat\beta}` with
    the 95% CI :math:`e^{\hat\beta \pm 1.96\,\mathrm{SE}}`. No ratio is reported for the
    probit link.

    *ICC and R² on the latent scale* (Nakagawa & Schielzeth 2013; Nakagawa, Johnson &
    Schielzeth 2017): :math:`\mathrm{ICC}_l = \sigma^2_l/(\sum_l\sigma^2_l +
    \sigma^2_\varepsilon)` with :math:`\sigma^2_\varepsilon = \pi^2/3` (logit), 1
    (probit), or the log-normal approximation :math:`\log(1 + 1/\lambda)` (Poisson, see
    :func:`latent_residual_variance`).

    *Agreement with lme4 1.1-31's glmer* (``tests/test_glmer.py``, glmer refitted with
    ``tolPwrss = 1e-13`` and tight optimiser tolerances): log-likelihood within 1e-6
    relative, fixed effects within 1e-4, SEs and β-only SEs within 1e-3 relative,
    variances within 2e-3 relative, on binomial cbind data (lme4's ``cbpp``), binary data
    with a therapist level, Poisson counts with three nested factors (lme4's
    ``grouseticks``) and with a correlated random slope, binary sessions in patients in
    therapists, and adaptive quadrature with nAGQ = 5 (binary and cbind data). With the
    probit link glmer's Hessian SEs differ from ours by up to 2.4%: its PIRLS (Fisher
    scoring, linearly convergent) leaves errors of 1e-6 in its deviance, which its
    finite-difference Hessian magnifies; its β-only SEs agree within 1e-3.

    References
    ----------
    Bates, D., Mächler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects
    models using lme4. *Journal of Statistical Software, 67*(1), 1–48.
    Nakagawa, S., & Schielzeth, H. (2013). A general and simple method for obtaining R² from
    generalized linear mixed-effects models. *Methods in Ecology and Evolution, 4*(2),
    133–142.
    Nakagawa, S., Johnson, P. C. D., & Schielzeth, H. (2017). The coefficient of
    determination R² and intra-class correlation coefficient from generalized linear
    mixed-effects models revisited and expanded. *Journal of the Royal Society Interface,
    14*(134), 20170213.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from allianceflow.models import fit_model
    >>> rng = np.random.default_rng(3)
    >>> d = pd.DataFrame({"therapist": np.repeat([f"T{i:02d}" for i in range(30)], 20),
    ...                   "x": rng.normal(size=600)})
    >>> eta = -0.3 + 0.5 * d["x"] + np.repeat(rng.normal(0, 0.6, 30), 20)
    >>> d["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    >>> res = fit_model(d, "y ~ x + (1 | therapist)", family="binomial")
    >>> res.converged, res.family, res.link, res.to_dict()["ratio_type"]
    (True, 'binomial', 'logit', 'odds ratio')
    >>> list(res.ratios["term"])
    ['Intercept', 'x']
    """
    from allianceflow.models.fit import _check_min_levels, _check_name, _few_level_terms, check_data
    from allianceflow.models.formula import parse_formula

    check_data(data)
    _check_name(name)
    min_levels = _check_min_levels(min_levels)
    if family not in FAMILIES:
        raise ValueError(f"`family` must be 'binomial' or 'poisson'; got {family!r}.")
    spec = formula if isinstance(formula, FormulaSpec) else parse_formula(formula)
    if not spec.random:
        raise ValueError(
            f"`formula` {spec.formula!r} has no random part; add e.g. '(1 | therapist)' "
            "(for a model without random effects use an ordinary GLM)."
        )
    rows, n_dropped = model_rows(data, spec)
    by_variable = missing_by_variable(data, spec)
    fit_spec, dropped = _few_level_terms(rows, spec, min_levels)
    _check_response_varies(rows, spec, family)
    backend, extra = fit_backend(
        rows,
        fit_spec,
        family=family,
        link=link,
        n_agq=nAGQ,
        vcov=vcov,
        boundary_tol=boundary_tol,
    )
    return build_result(
        backend,
        name=name,
        formula=spec.formula,
        reml=False,
        n_dropped=n_dropped,
        dropped_by_variable=by_variable,
        dropped_terms=dropped,
        boundary_tol=boundary_tol,
        extra=extra,
    )
