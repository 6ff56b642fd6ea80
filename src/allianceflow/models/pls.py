r"""Penalised least squares for nested linear mixed models, vectorised over units.

The models of the presets have random intercepts and slopes for patients, patients nested
in therapists, and optionally therapists nested in studies. For such *nested* designs the
penalised least-squares (PLS) system of lme4 (Bates, Mächler, Bolker & Walker 2015) is
block-structured: eliminating the innermost level (patients) leaves one small dense block
per therapist, eliminating therapists leaves one block per study, and so on, with no
fill-in. This module exploits that structure with batched numpy linear algebra over all
units of a level at once (no per-patient Python loop), after a single pass over the data
that collects each unit's cross-products. One evaluation of the profiled deviance then costs
a few milliseconds even for 10^5 patients, independent of the number of sessions.

:class:`Problem` holds the sufficient statistics and evaluates the profiled deviance;
:func:`supports` tells whether a parsed formula has a structure it fits (so that
:func:`allianceflow.models.fit_model` can choose the fast engine automatically and fall back
to statsmodels' ``MixedLM`` otherwise). :mod:`allianceflow.models.engine` fits with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.linalg.lapack import dgesv as _gesv
from scipy.linalg.lapack import dpotrf as _potrf

from allianceflow.models.design import group_codes, nested_in
from allianceflow.models.formula import FormulaSpec, parse_formula

__all__ = ["Problem", "supports", "levels_from_spec", "nesting_order", "factor_codes"]

INTERCEPT = "(Intercept)"

# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class _Level:
    """One grouping factor: its effects and the free (lower-triangular) entries of Λ."""

    label: str
    factor: tuple[str, ...]
    effects: tuple[str, ...]
    pattern: np.ndarray  # (q, q) bool, lower triangle: which entries of Λ are free

    @property
    def q(self) -> int:
        return len(self.effects)

    @property
    def theta_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each free entry, column-major (lme4's order of θ)."""
        cols, rows = np.nonzero(self.pattern.T)
        return rows, cols


def levels_from_spec(spec: FormulaSpec) -> list[_Level]:
    """Merge the random terms of each grouping factor into one level (lme4 blocks)."""
    by_factor: dict[tuple[str, ...], list] = {}
    for term in spec.random:
        by_factor.setdefault(term.factor, []).append(term)
    levels = []
    for factor, terms in by_factor.items():
        effects: list[str] = []
        blocks: list[tuple[list[int], bool]] = []
        for term in terms:
            idx = []
            for eff in term.effects:
                if eff in effects:
                    raise ValueError(
                        f"random term {term.source!r}: the {eff} effect for {term.label!r} "
                        "appears twice in the formula."
                    )
                effects.append(eff)
                idx.append(len(effects) - 1)
            blocks.append((idx, term.correlated))
        q = len(effects)
        pattern = np.zeros((q, q), dtype=bool)
        for idx, corr in blocks:
            for a in idx:
                for b in idx:
                    if a == b or (corr and a > b):
                        pattern[a, b] = True
        levels.append(_Level(":".join(factor), factor, tuple(effects), pattern))
    return levels


def check_spec(spec) -> FormulaSpec:
    if isinstance(spec, str):
        return parse_formula(spec)
    if not isinstance(spec, FormulaSpec):
        raise TypeError(
            "`formula_or_spec` must be an lme4 formula string or a FormulaSpec; got "
            f"{type(spec).__name__}."
        )
    return spec


#: Integer codes of a grouping factor and its levels (the models' one helper for them,
#: :func:`allianceflow.models.design.group_codes`).
factor_codes = group_codes


def nesting_order(
    data: pd.DataFrame, levels: list[_Level], *, sort: bool = True
) -> tuple[list[_Level], list[np.ndarray]] | None:
    """Order levels inner to outer and check that each is nested in the next; None if not.

    Returns the ordered levels and their integer codes (:func:`group_codes`, levels in
    sorted order unless ``sort`` is False).
    """
    coded = [(lev, group_codes(data, lev.factor, sort=sort)[0]) for lev in levels]
    coded.sort(key=lambda lc: -(int(lc[1].max()) + 1 if lc[1].size else 0))
    for (_inner, ci), (_outer, co) in zip(coded[:-1], coded[1:], strict=True):
        if not nested_in(ci, co):
            return None
    return [lc[0] for lc in coded], [lc[1] for lc in coded]


def supports(spec: FormulaSpec | str, data: pd.DataFrame | None = None) -> bool:
    """Whether the fast engine can fit a model of this structure.

    Parameters
    ----------
    spec : FormulaSpec or str
        A parsed (or unparsed) lme4 formula.
    data : DataFrame, optional
        With data, also check that the grouping factors are nested in one another
        (every level of an inner factor within a single level of the next outer one), as
        the engine requires. Without data only the formula is checked.

    Returns
    -------
    bool
        True for one or more nested grouping factors, each with any random intercept and
        random slopes on data columns, correlated (``|``) or not (``||``); False for
        crossed factors, repeated effects, or a formula without random part.

    Examples
    --------
    >>> supports("y ~ x + (1 + x | patient) + (1 | therapist)")
    True
    >>> supports("y ~ x")
    False
    """
    try:
        spec = check_spec(spec)
        if not spec.random:
            return False
        levels = levels_from_spec(spec)
        if data is not None:
            for lev in levels:
                for col in lev.factor:
                    if col not in data.columns:
                        return False
            cols = list(dict.fromkeys(c for lev in levels for c in lev.factor))
            # complete rows (as fit_model passes) are used as they are, so that their codes
            # are shared (design.shared_codes); otherwise the complete cases of the factors
            d = data if not data[cols].isna().to_numpy().any() else data[cols].dropna()
            if len(d) == 0 or nesting_order(d, levels, sort=False) is None:
                return False
        return True
    except (ValueError, TypeError, KeyError):
        return False


# --------------------------------------------------------------------------- the model


class Problem:
    """Sufficient statistics of a nested LMM and its profiled deviance as a function of θ.

    Columns of the working matrix W, per observation: the random-effect columns of each
    level (inner to outer), then X, then y. ``k = sum(q) + p + 1``. The data are sorted so
    that every unit of every level is a contiguous run of rows.
    """

    def __init__(self, levels, codes, Z_cols, X, y, reml):
        self.levels = levels
        self.reml = reml
        self.n, self.p = X.shape
        nlev = len(levels)
        qs = [lev.q for lev in levels]
        self.qs = qs
        # sort rows by outer ... inner codes
        order = np.lexsort(tuple(codes[i] for i in range(nlev)))  # last key = outermost
        codes = [c[order] for c in codes]
        W = np.column_stack([*(z[order] for z in Z_cols), X[order], y[order]])
        k = W.shape[1]
        self.k = k
        # unit boundaries per level (rows are sorted, so a unit is a run of equal codes)
        starts = []
        unit_codes = []
        for li in range(nlev):
            c = codes[li]
            s = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
            starts.append(s)
            unit_codes.append(c[s])
        self.unit_codes = unit_codes
        self.m = [len(s) for s in starts]
        # parent of each unit (index of the unit of the next level it lies in)
        self.parent_starts = []
        self.parent_of = []
        for li in range(nlev):
            if li + 1 < nlev:
                # row index of unit starts -> the unit of the next level containing that row
                row_unit_next = np.searchsorted(starts[li + 1], starts[li], side="right") - 1
                self.parent_of.append(row_unit_next)
                self.parent_starts.append(
                    np.flatnonzero(np.r_[True, row_unit_next[1:] != row_unit_next[:-1]])
                )
            else:
                self.parent_of.append(np.zeros(self.m[li], dtype=np.int64))
                self.parent_starts.append(np.array([0]))
        # innermost level: per-unit cross-products of its Z columns with everything
        # (arrays are component-major, units last: G[a, b] is a contiguous vector over units)
        q0 = qs[0]
        self.GP0 = np.empty((q0, k, self.m[0]))
        for a in range(q0):
            self.GP0[a] = np.add.reduceat(W[:, a : a + 1] * W, starts[0], axis=0).T
        # and, per parent unit of the innermost level, the cross-products of the rest
        r0 = k - q0
        rest = W[:, q0:]
        rows_parent_starts = starts[1] if nlev > 1 else np.array([0])
        self.Grr0 = np.empty((r0, r0, len(rows_parent_starts)))
        for a in range(r0):
            self.Grr0[a, a:] = np.add.reduceat(
                rest[:, a : a + 1] * rest[:, a:], rows_parent_starts, axis=0
            ).T
            self.Grr0[a:, a] = self.Grr0[a, a:]
        # theta layout
        self.theta_slices = []
        lower = []
        pos = 0
        for lev in levels:
            rows, cols = lev.theta_index
            self.theta_slices.append((slice(pos, pos + len(rows)), rows, cols))
            lower += [0.0 if r == c else -np.inf for r, c in zip(rows, cols, strict=True)]
            pos += len(rows)
        self.n_theta = pos
        self.lower = np.array(lower)
        self.n_evals = 0
        col = 0
        self.z_rms = []
        for q in qs:
            rms = np.sqrt(np.mean(W[:, col : col + q] ** 2, axis=0))
            self.z_rms.append(np.where(rms > 0, rms, 1.0))
            col += q

    def theta_scale(self) -> np.ndarray:
        """RMS of the random-effect column behind each θ entry's row of Λ."""
        out = np.empty(self.n_theta)
        for li in range(len(self.levels)):
            sl, rows, _ = self.theta_slices[li]
            out[sl] = self.z_rms[li][rows]
        return out

    def theta0(self) -> np.ndarray:
        """Return the default start: 1 for diagonal entries of Λ, 0 off the diagonal."""
        return np.where(np.isfinite(self.lower), 1.0, 0.0)

    def lam(self, theta: np.ndarray, li: int) -> np.ndarray:
        """Return Λ of level *li* at *theta*."""
        sl, rows, cols = self.theta_slices[li]
        q = self.qs[li]
        L = np.zeros((q, q))
        L[rows, cols] = theta[sl]
        return L

    # ----------------------------------------------------------------- deviance
    @staticmethod
    def _eliminate(GPR, GPP, Lam):
        """Eliminate one level, vectorised over its units (component-major arrays).

        ``A = Λ'GΛ + I`` (q, q, m), its Cholesky factor L, ``E = Λ'G_rest`` (q, r, m) and
        ``F = L^{-1}E``. Returns (sum of log|A|, F, A, E).
        """
        q = Lam.shape[0]
        nz = [(c, b) for c in range(q) for b in range(q) if Lam[c, b] != 0.0]
        # T = G Λ, A = Λ' T + I
        T = [[None] * q for _ in range(q)]
        for c in range(q):
            for b in range(q):
                acc = 0.0
                for d in range(q):
                    if Lam[d, b] != 0.0:
                        acc = acc + GPP[c, d] * Lam[d, b]
                T[c][b] = acc
        m = GPP.shape[-1]
        A = np.empty((q, q, m))
        for a_ in range(q):
            for b in range(a_ + 1):
                acc = 1.0 if a_ == b else 0.0  # (scalar start: no array to allocate)
                for c in range(q):
                    if Lam[c, a_] != 0.0:
                        acc = acc + Lam[c, a_] * T[c][b]
                A[a_, b] = acc
                A[b, a_] = acc
        E = np.zeros((q, GPR.shape[1], m))
        for c, a_ in nz:
            E[a_] += Lam[c, a_] * GPR[c]
        # Cholesky (Banachiewicz) and forward substitution, vector ops over units
        L = np.zeros_like(A)
        logdet = 0.0
        F = np.empty_like(E)
        for j in range(q):
            sjj = A[j, j] - sum((L[j, k_] ** 2 for k_ in range(j)), 0.0)
            L[j, j] = np.sqrt(sjj)
            logdet += 2.0 * float(np.log(L[j, j]).sum())
            for i in range(j + 1, q):
                L[i, j] = (A[i, j] - sum((L[i, k_] * L[j, k_] for k_ in range(j)), 0.0)) / L[j, j]
        for i in range(q):
            acc = E[i].copy()
            for k_ in range(i):
                acc -= L[i, k_] * F[k_]
            F[i] = acc / L[i, i]
        return logdet, F, A, E

    @staticmethod
    def _crossprod_by_parent(F, starts):
        """Per parent unit, sum over its children of F_i'F_i: (r, r, n_parents)."""
        q, r, m = F.shape
        out = np.empty((r, r, len(starts)))
        for a in range(r):
            P = F[0, a] * F[0, a:]
            for qq in range(1, q):
                P += F[qq, a] * F[qq, a:]
            out[a, a:] = np.add.reduceat(P, starts, axis=1)
            out[a:, a] = out[a, a:]
        return out

    def solve(self, theta: np.ndarray, keep: bool = False):
        """Profiled deviance and its by-products at ``theta``."""
        theta = np.asarray(theta, dtype=float)
        self.n_evals += 1
        nlev = len(self.levels)
        logdet = 0.0
        kept = []
        q0 = self.qs[0]
        GPP = self.GP0[:, :q0]
        GPR = self.GP0[:, q0:]
        Grr = self.Grr0  # per parent: sum of rest x rest cross-products
        for li in range(nlev):
            Lam = self.lam(theta, li)
            ld, F, A, E = self._eliminate(GPR, GPP, Lam)
            logdet += ld
            kept.append((A, E) if keep else None)
            if li + 1 < nlev:
                H = Grr - self._crossprod_by_parent(F, self.parent_starts[li])
                qn = self.qs[li + 1]
                GPP = H[:qn, :qn]
                GPR = H[:qn, qn:]
                rest = H[qn:, qn:]
                if li + 2 < nlev:
                    Grr = np.add.reduceat(rest, self.parent_starts[li + 1], axis=2)
                else:
                    Grr = rest.sum(axis=2, keepdims=True)
            else:
                H = Grr[:, :, 0].copy()
                for qq in range(F.shape[0]):
                    H -= F[qq, :, :] @ F[qq, :, :].T
        p = self.p
        XtVX = H[:p, :p]
        XtVy = H[:p, p]
        yVy = H[p, p]
        # LAPACK directly (the same potrf and gesv numpy.linalg calls): on the engine's
        # p x p systems numpy's wrappers cost more than the factorisations
        RX, info = _potrf(XtVX, lower=1)
        if info != 0:
            return {"deviance": np.inf}
        _, _, beta, info = _gesv(XtVX, XtVy)
        if info != 0:
            return {"deviance": np.inf}
        r2 = float(yVy - XtVy @ beta)
        n = self.n
        if not r2 > 0:
            return {"deviance": np.inf}
        if self.reml:
            nu = n - p
            ldx = 2.0 * np.log(np.diag(RX)).sum()
            dev = logdet + ldx + nu * (1.0 + math.log(2.0 * math.pi * r2 / nu))
            sigma2 = r2 / nu
        else:
            dev = logdet + n * (1.0 + math.log(2.0 * math.pi * r2 / n))
            sigma2 = r2 / n
        out = {"deviance": float(dev), "beta": beta, "sigma2": sigma2, "XtVX": XtVX, "r2": r2}
        if keep:
            # unit-major copies for the back-substitution
            out["kept"] = [(np.moveaxis(A, -1, 0), np.moveaxis(E, -1, 0)) for A, E in kept]
        return out

    def deviance(self, theta: np.ndarray) -> float:
        """Return the profiled deviance at *theta* (inf where it cannot be evaluated)."""
        with np.errstate(all="ignore"):
            try:
                d = self.solve(theta)["deviance"]
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                return np.inf
        return d if math.isfinite(d) else np.inf

    # ----------------------------------------------------------------- conditional modes
    def conditional_modes(self, theta, sol):
        """Back-substitute outer to inner: u = A^{-1} E w, b = Λ u; conditional covariances."""
        nlev = len(self.levels)
        kept = sol["kept"]
        beta = sol["beta"]
        sigma2 = sol["sigma2"]
        b_levels: list[np.ndarray | None] = [None] * nlev
        cov_u: list[np.ndarray | None] = [None] * nlev
        for li in range(nlev - 1, -1, -1):
            A, E = kept[li]
            m = A.shape[0]
            # w = [-b_{li+1}[parent], -b_{li+2}[grandparent], ..., -beta, 1]
            parts = []
            idx = np.arange(m)
            for lj in range(li + 1, nlev):
                idx = self.parent_of[lj - 1][idx]
                parts.append(-b_levels[lj][idx])
            parts.append(np.broadcast_to(-beta, (m, len(beta))))
            parts.append(np.ones((m, 1)))
            w = np.concatenate(parts, axis=1)
            Ainv = np.linalg.inv(A)
            u = np.einsum("mab,mb->ma", Ainv, np.einsum("mar,mr->ma", E, w))
            Lam = self.lam(theta, li)
            b_levels[li] = u @ Lam.T
            cu = Ainv
            if li + 1 < nlev:
                # add the uncertainty of the parent's effects (exact for two levels)
                qn = self.qs[li + 1]
                Lp = self.lam(theta, li + 1)
                K = E[:, :, :qn] @ Lp  # (m, q, qn): coupling to the parent's u
                par = self.parent_of[li]
                AK = Ainv @ K
                cu = Ainv + AK @ cov_u[li + 1][par] @ AK.transpose(0, 2, 1)
            cov_u[li] = cu
        ses = []
        for li in range(nlev):
            Lam = self.lam(theta, li)
            cb = Lam @ cov_u[li] @ Lam.T * sigma2
            ses.append(np.sqrt(np.maximum(np.diagonal(cb, axis1=1, axis2=2), 0.0)))
        return b_levels, ses
