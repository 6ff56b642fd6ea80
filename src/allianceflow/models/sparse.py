r"""Crossed and partially crossed random effects: lme4's penalised least squares, sparse.

When the grouping factors of a model are not nested in one another -- observer raters
crossed with patients, patients who change therapists, items crossed with persons -- the
block elimination of :mod:`allianceflow.models.pls` does not apply. This module fits such
models with the formulation of lme4 (Bates, Mächler, Bolker & Walker 2015, sections
3.2-3.6): the random effects are :math:`b = \Lambda_\theta u` with
:math:`u \sim N(0, \sigma^2 I_q)`, the penalised least-squares problem

.. math::

    \min_{u, \beta}\; \|y - X\beta - Z\Lambda_\theta u\|^2 + \|u\|^2

is solved through the sparse Cholesky factor of
:math:`A_\theta = \Lambda_\theta^\top Z^\top Z \Lambda_\theta + I_q`, and the profiled
deviances are those of the nested engine (Bates et al. 2015, eqs. 34 and 41):

.. math::

    d(\theta) = \log|A_\theta| + n\left(1 + \log\frac{2\pi r^2_\theta}{n}\right), \qquad
    d_R(\theta) = \log|A_\theta| + \log|R_X|^2
                  + (n-p)\left(1 + \log\frac{2\pi r^2_\theta}{n-p}\right),

with :math:`r^2_\theta` the penalised residual sum of squares at the conditional optimum
and :math:`R_X^\top R_X = X^\top V_\theta^{-1} X` (relative to :math:`\sigma^2`). θ is
optimised by :func:`allianceflow.models.optimize.minimize_bounded`, the optimiser and
convergence check of the nested engine.

The sparse Cholesky: a block elimination with a fixed fill-reducing order
-------------------------------------------------------------------------
Order the random effects so that the grouping factor with the most random effects
(:math:`m_1 q_1`: levels times effects; patients, in the studies this package serves) comes
first and all other factors after it, and partition

.. math::

    A_\theta = \begin{pmatrix} A_{11} & A_{12} \\ A_{21} & A_{22} \end{pmatrix},
    \qquad A_{11} = \operatorname{blockdiag}_i(\Lambda_1^\top Z_{1i}^\top Z_{1i}\Lambda_1
    + I_{q_1}).

:math:`A_{11}` is block diagonal (a unit of one factor never shares a random effect with
another unit of the same factor), so it is factored unit by unit, vectorised over all
:math:`m_1` units at once, with no fill. What remains is the Schur complement
:math:`S = A_{22} - A_{21}A_{11}^{-1}A_{12}` over the other factors' random effects
(raters, therapists: tens to a few thousand), factored densely (LAPACK). This is the
elimination order a minimum-degree ordering chooses for a bipartite patient × rater graph
-- eliminate the many low-degree patient nodes first; the fill lands in the small
rater block -- fixed once from the design instead of recomputed, as lme4 analyses the
sparsity pattern once (CHOLMOD's symbolic factorisation with its fill-reducing
permutation) and only refactors numerically for each θ. Per evaluation the cost is
:math:`O(q_1^2\sum_i n_i^2 + q_2^3/3)`, with :math:`n_i` the other factors' random effects
that unit *i* shares rows with and :math:`q_2` the number of random effects outside the
first factor, independent of the number of rows. :func:`supports` refuses designs whose :math:`q_2`
exceeds :data:`MAX_SCHUR` (two huge factors crossed, e.g. 20,000 persons × 10,000 items),
where the dense Schur complement would not fit; those go to statsmodels (with a warning
of its cost, :mod:`allianceflow.models.statsmodels_backend`).

Why not CHOLMOD or SuperLU (measured, ``benchmarks/results/crossed.txt``): scikit-sparse,
the maintained CHOLMOD binding, ships no wheels for any version; ``pip install
scikit-sparse==0.5.0`` compiles from source and fails without SuiteSparse's headers
(``cholmod.h: No such file or directory``), and with Debian 12's ``libsuitesparse-dev``
(SuiteSparse 5.12) installed it still fails to compile (0.5.0 expects SuiteSparse 7); 0.4.16
builds there with a C compiler. A ``pip install allianceflow`` user can therefore not be
assumed to have it. Measured on the 70,000-row crossed benchmark (7,500 patients × 300
raters, :math:`A_\theta` of order 7,800 with 140,114 non-zeros), CPU time of one
evaluation at the optimum with one BLAS thread: this module's whole deviance 7.1 ms;
CHOLMOD (scikit-sparse 0.4.16, symbolic analysis done once, 66 ms) 42.7 ms for the numeric
factorisation alone; scipy's SuperLU (``splu``, minimum-degree ordering of
:math:`A + A^\top`, no pivoting, no reusable analysis) 148 ms for the factorisation alone.
All three give the same :math:`\log|A_\theta|` to 1e-6. The block elimination needs
numpy and scipy only and is the fastest, so it is the choice; CHOLMOD would matter only
for designs whose smaller factors are too many for a dense Schur complement
(:data:`MAX_SCHUR`), which go to statsmodels.

For generalised models (PIRLS)
------------------------------
The pieces are written so that a penalised iteratively reweighted least-squares loop (the
inner step of lme4's ``glmer``) can reuse them for crossed GLMMs:
:class:`CrossedProblem` takes the design once (``Z`` columns, ``X``, ``y``) and fixes the
pattern of :math:`Z_1^\top Z_2` and the elimination order; :meth:`CrossedProblem.update_weights`
recomputes the weighted cross-products (:math:`Z^\top W Z`, :math:`Z^\top W X`,
:math:`Z^\top W z`) for new working weights :math:`W` and working response :math:`z`
without touching the design; :meth:`CrossedProblem.factor` returns the factorisation at θ
(the unit blocks :math:`D_i`, the Schur complement's Cholesky factor, :math:`\log|A_\theta|`
and the reduced system); :meth:`CrossedProblem.modes` gives the conditional modes
:math:`\hat b = \Lambda_\theta \hat u` for given β. A PIRLS iteration is then: working
weights and response from the current linear predictor, ``update_weights``, ``factor``,
β and :math:`\hat b` from the reduced system and ``modes``, until the penalised deviance
stops falling; the Laplace approximation to the deviance is
:math:`\log|A_\theta| + \|\hat u\|^2 +` the GLM deviance at the modes
(Bates et al. 2015, sec. 3 for the LMM pieces; the GLMM case follows the same PLS system
with weights). No GLMM is fitted here.

References
----------
Bates, D., Mächler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects
models using lme4. *Journal of Statistical Software, 67*(1), 1–48.
https://doi.org/10.18637/jss.v067.i01
Chen, Y., Davis, T. A., Hager, W. W., & Rajamanickam, S. (2008). Algorithm 887:
CHOLMOD, supernodal sparse Cholesky factorization and update/downdate. *ACM Transactions
on Mathematical Software, 35*(3), 22.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import blas
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs

from allianceflow.models.blas import one_blas_thread
from allianceflow.models.design import ModelError, check_rank, fixed_design, model_rows
from allianceflow.models.engine import LMMFit, fit_warnings, single_attempt
from allianceflow.models.formula import FormulaSpec
from allianceflow.models.optimize import minimize_bounded
from allianceflow.models.pls import INTERCEPT, check_spec, factor_codes, levels_from_spec
from allianceflow.models.result import BackendFit

__all__ = [
    "MAX_SCHUR",
    "CrossedProblem",
    "Factorization",
    "supports",
    "refusal",
    "schur_size",
    "fit_crossed",
    "fit_backend",
]

#: Largest number of random effects outside the largest grouping factor (the dense Schur
#: complement's order) that :func:`supports` accepts: 6000 needs 288 MB for the complement
#: and its factor and about 1 s per deviance evaluation on one core.
MAX_SCHUR = 6000

ENGINE = "allianceflow.sparse"


#: Largest number of within-unit products of :math:`Z_1^\top Z_2` entries for which
#: :math:`C^\top D C` is one product with a precomputed sparse matrix (about 12 bytes x
#: q1(q1+1)/2 each).
MAX_PAIR_PRODUCTS = 20_000_000

#: Below this order of the Schur complement the fit runs with one BLAS thread.
SINGLE_THREAD_BELOW = 2000


def _blas_threads(limit: int | None):
    """Limit BLAS to *limit* threads while fitting (a no-op with None).

    The Schur complements of typical designs (tens to hundreds of raters or therapists) are
    too small for threaded LAPACK to pay: on a loaded two-core machine, OpenBLAS's two
    threads made a 2,000-patient crossed fit take 14 s of CPU (51 s wall) instead of
    0.43 s (1.7 s) with one (:func:`allianceflow.models.blas.one_blas_thread`, whose
    library scan is shared with the other engines).
    """
    import contextlib

    if limit is None:
        return contextlib.nullcontext()
    return one_blas_thread(limit)


def _trsm(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``lower @ x = rhs`` for a lower-triangular matrix (BLAS dtrsm).

    BLAS's ``dtrsm`` rather than ``scipy.linalg.solve_triangular`` (LAPACK ``dtrtrs``),
    which was a thousand times slower on small systems on a loaded two-core machine.
    """
    if rhs.ndim == 1:
        return _trsm(lower, rhs[:, None])[:, 0]
    return blas.dtrsm(1.0, lower, rhs, lower=1)


def _unit_blocks(g: dict, lam: np.ndarray) -> tuple[float, np.ndarray]:
    r"""Factor the unit blocks :math:`A_i = \Lambda^\top G_i\Lambda + I` of the first factor.

    Returns :math:`\sum_i \log|A_i|` and :math:`D_i = \Lambda A_i^{-1}\Lambda^\top`, shape
    (m, q, q). *g* maps ``(a, b)`` to the vector of :math:`G_{i,ab}` over units. For
    :math:`q \le 2` the inverse and determinant are written out (:math:`A^{-1} =
    \operatorname{adj}(A)/|A|`), vectorised over units; larger blocks go to LAPACK (batched
    Cholesky and inverse). Raises ``numpy.linalg.LinAlgError`` when a block is not positive
    definite.
    """
    q = lam.shape[0]
    if q == 1:
        ll = lam[0, 0] * lam[0, 0]
        a = ll * g[0, 0] + 1.0
        if not np.all(a > 0):
            raise np.linalg.LinAlgError("a unit block is not positive definite")
        return float(np.log(a).sum()), (ll / a)[:, None, None]
    if q == 2:
        (l00, _), (l10, l11) = lam
        # T = G Λ (columns 0, 1), then A = Λ'T + I
        t00 = g[0, 0] * l00 + g[0, 1] * l10
        t10 = g[1, 0] * l00 + g[1, 1] * l10
        t01 = g[0, 1] * l11
        t11 = g[1, 1] * l11
        a00 = l00 * t00 + l10 * t10 + 1.0
        a01 = l00 * t01 + l10 * t11
        a11 = l11 * t11 + 1.0
        det = a00 * a11 - a01 * a01
        if not (np.all(a00 > 0) and np.all(det > 0)):
            raise np.linalg.LinAlgError("a unit block is not positive definite")
        # A^{-1} = [[a11, -a01], [-a01, a00]] / det; D = Λ A^{-1} Λ'
        i00, i01, i11 = a11 / det, -a01 / det, a00 / det
        d = np.empty((len(det), 2, 2))
        d[:, 0, 0] = l00 * l00 * i00
        d[:, 0, 1] = d[:, 1, 0] = l00 * (l10 * i00 + l11 * i01)
        d[:, 1, 1] = l10 * l10 * i00 + 2.0 * l10 * l11 * i01 + l11 * l11 * i11
        return float(np.log(det).sum()), d
    m = len(g[0, 0])
    G = np.empty((m, q, q))
    for (a, b), v in g.items():
        G[:, a, b] = v
    A = lam.T @ G @ lam
    A += np.eye(q)
    L = np.linalg.cholesky(A)
    logdet = 2.0 * float(np.log(np.diagonal(L, axis1=1, axis2=2)).sum())
    return logdet, lam @ np.linalg.inv(A) @ lam.T


# --------------------------------------------------------------------------- structure


def _level_codes(data: pd.DataFrame, levels) -> list[np.ndarray]:
    return [factor_codes(data, lev.factor)[0] for lev in levels]


def schur_size(spec: FormulaSpec | str, data: pd.DataFrame) -> tuple[int, int]:
    r"""Random effects of the largest grouping factor and of all the others.

    Returns
    -------
    (int, int)
        :math:`m_1 q_1` (eliminated unit by unit) and :math:`q_2 = \sum_{k>1} m_k q_k` (the
        order of the dense Schur complement), for the complete rows of *data*.
    """
    spec = check_spec(spec)
    levels = levels_from_spec(spec)
    sizes = []
    for lev in levels:
        cols = list(lev.factor)
        rows = data if not data[cols].isna().to_numpy().any() else data[cols].dropna()
        m = len(factor_codes(rows, lev.factor, sort=False)[1])
        sizes.append(m * lev.q)
    if not sizes:
        return 0, 0
    big = max(sizes)
    return big, sum(sizes) - big


def refusal(spec: FormulaSpec | str, data: pd.DataFrame) -> str:
    """Say in one sentence why :func:`supports` refuses *spec* on *data* ("" if it does not).

    Examples
    --------
    >>> refusal("y ~ x", pd.DataFrame({"y": [1.0], "x": [2.0]}))
    "the formula 'y ~ x' has no random part."
    """
    spec = check_spec(spec)
    if not spec.random:
        return f"the formula {spec.formula!r} has no random part."
    missing = [c for lev in levels_from_spec(spec) for c in lev.factor if c not in data.columns]
    if missing:
        return f"the grouping column(s) {missing} are not in the data."
    q2 = schur_size(spec, data)[1]
    if q2 > MAX_SCHUR:
        return (
            f"the grouping factors other than the largest have {q2} random effects together, "
            f"more than the sparse engine's limit of {MAX_SCHUR} (its dense Schur complement "
            f"would need {2 * 8 * q2 * q2 / 2**30:.1f} GiB)."
        )
    return ""


def supports(spec: FormulaSpec | str, data: pd.DataFrame | None = None) -> bool:
    """Whether the sparse engine fits a model of this structure.

    Any number of grouping factors, each with random intercepts and/or slopes on data
    columns, correlated (``|``) or not (``||``), nested or crossed; with *data*, the
    random effects outside the largest factor must number at most :data:`MAX_SCHUR`.

    Examples
    --------
    >>> supports("y ~ x + (1 + x | patient) + (1 | rater)")
    True
    >>> supports("y ~ x")
    False
    """
    try:
        spec = check_spec(spec)
        if not spec.random:
            return False
        levels_from_spec(spec)
        if data is not None:
            for lev in levels_from_spec(spec):
                for col in lev.factor:
                    if col not in data.columns:
                        return False
            return schur_size(spec, data)[1] <= MAX_SCHUR
        return True
    except (ValueError, TypeError, KeyError):
        return False


@dataclass
class Factorization:
    r"""The factorisation of :math:`A_\theta` and the reduced system at one θ.

    Attributes
    ----------
    logdet : float
        :math:`\log|A_\theta|`.
    d1 : ndarray
        :math:`D_i = \Lambda_1 A_{11,i}^{-1}\Lambda_1^\top`, shape (m1, q1, q1).
    chol2 : ndarray
        Lower Cholesky factor of the Schur complement :math:`S` (q2, q2).
    r2 : ndarray
        :math:`\Lambda_2^\top (Z_2^\top W - Z_2^\top Z_1 D Z_1^\top W)`, (q2, p + 1).
    h : ndarray
        :math:`W^\top V_\theta^{-1} W` (relative to :math:`\sigma^2`), W = [X y].
    """

    logdet: float
    d1: np.ndarray
    chol2: np.ndarray
    r2: np.ndarray
    h: np.ndarray


class CrossedProblem:
    r"""An LMM with arbitrary (crossed, partially crossed) grouping factors.

    Parameters
    ----------
    levels : list
        Grouping factors (:func:`allianceflow.models.pls.levels_from_spec`).
    codes : list of ndarray
        Per level, the 0-based unit code of each row.
    z_cols : list of list of ndarray
        Per level, one column per effect (ones for an intercept).
    X, y : ndarray
        Fixed-effects design and response.
    reml : bool
    weights : ndarray, optional
        Prior weights (PIRLS working weights); ones when omitted.

    Notes
    -----
    The level with the most random effects (``first``) is eliminated unit by unit; the
    others form the dense Schur complement. θ is laid out level by level in the order of
    *levels*, each level's free lower-triangular entries of :math:`\Lambda` column by column
    (lme4's order within a term).
    """

    def __init__(self, levels, codes, z_cols, X, y, reml, weights=None):
        self.levels = list(levels)
        self.reml = bool(reml)
        self.X = np.asarray(X, dtype=float)
        self.n, self.p = self.X.shape
        self.qs = [lev.q for lev in self.levels]
        self.m = [int(c.max()) + 1 if c.size else 0 for c in codes]
        self.codes = [np.asarray(c, dtype=np.int64) for c in codes]
        self.z = [np.column_stack(zc) for zc in z_cols]
        sizes = [m * q for m, q in zip(self.m, self.qs, strict=True)]
        self.first = int(np.argmax(sizes))
        self.rest = [k for k in range(len(self.levels)) if k != self.first]
        self.offsets = {}
        pos = 0
        for k in self.rest:
            self.offsets[k] = pos
            pos += sizes[k]
        self.q2 = pos
        # the first factor's units and the other factors' random effects they share rows
        # with: the pattern of Z_1'Z_2, one entry per (unit, column) pair, the same for all
        # q1 rows of a unit (fixed; its values change only with PIRLS weights)
        f = self.first
        q1, m1 = self.qs[f], self.m[f]
        self._rows2, self._cols2, self._vals2 = [], [], []
        for k in self.rest:
            qk = self.qs[k]
            self._rows2.append(np.repeat(np.arange(self.n), qk))
            self._cols2.append(
                (self.offsets[k] + self.codes[k][:, None] * qk + np.arange(qk)[None, :]).ravel()
            )
            self._vals2.append(self.z[k].ravel())
        if self.rest:
            rows2 = np.concatenate(self._rows2)
            cols2 = np.concatenate(self._cols2)
            self._z2 = sp.csr_matrix(
                (np.concatenate(self._vals2), (rows2, cols2)), shape=(self.n, self.q2)
            )
            key = self.codes[f][rows2] * self.q2 + cols2
            uniq, self._pair_of_entry = np.unique(key, return_inverse=True)
            self._entry_row = rows2
            self._pair_unit = uniq // self.q2
            self._pair_col = uniq % self.q2
            npair = len(uniq)
            ptr = np.searchsorted(self._pair_unit, np.arange(m1 + 1))
            self._pair_ptr = ptr
            # csr layout of C (rows (unit, a)): unit i, row a holds its pairs in order
            counts = np.diff(ptr)
            indptr = np.zeros(m1 * q1 + 1, dtype=np.int64)
            indptr[1:] = np.cumsum(np.repeat(counts, q1))
            # position in the csr data of pair p's row a
            within = np.arange(npair) - ptr[self._pair_unit]
            self._csr_pos = (
                indptr[:-1][self._pair_unit[None, :] * q1 + np.arange(q1)[:, None]]
                + within[None, :]
            )  # (q1, npair)
            self._c_indptr = indptr
            self._c_indices = np.empty(npair * q1, dtype=np.int64)
            for a in range(q1):
                self._c_indices[self._csr_pos[a]] = self._pair_col
        else:
            self._z2 = sp.csr_matrix((self.n, 0))
        self._rest_scalar = all(self.qs[k] == 1 for k in self.rest)
        self._rest_m = [self.m[k] for k in self.rest]
        # theta layout (as pls.Problem)
        self.theta_slices = []
        lower = []
        pos = 0
        for lev in self.levels:
            r_, c_ = lev.theta_index
            self.theta_slices.append((slice(pos, pos + len(r_)), r_, c_))
            lower += [0.0 if a == b else -np.inf for a, b in zip(r_, c_, strict=True)]
            pos += len(r_)
        self.n_theta = pos
        self.lower = np.array(lower)
        self.z_rms = []
        for zk in self.z:
            rms = np.sqrt(np.mean(zk**2, axis=0))
            self.z_rms.append(np.where(rms > 0, rms, 1.0))
        self.n_evals = 0
        self.update_weights(np.asarray(y, dtype=float), weights)

    # ----------------------------------------------------------------- cross-products
    def update_weights(self, y: np.ndarray, weights: np.ndarray | None = None) -> None:
        r"""(Re)compute the weighted cross-products for a response and weights.

        With :math:`W = [X\; y]` and weights :math:`w`: :math:`Z_1^\top w Z_1` per unit,
        :math:`Z_1^\top w Z_2`, :math:`Z_2^\top w Z_2`, :math:`Z^\top w W` and
        :math:`W^\top w W`. A PIRLS loop calls this with its working response and weights
        at each iteration; the design and the elimination order stay.
        """
        n = self.n
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        self.y = np.asarray(y, dtype=float)
        W = np.column_stack([self.X, self.y])
        self.W = W
        f = self.first
        q1, m1 = self.qs[f], self.m[f]
        c1 = self.codes[f]
        z1 = self.z[f] * w[:, None]
        g1 = np.empty((m1, q1, q1))
        for a in range(q1):
            for b in range(a, q1):
                g1[:, a, b] = np.bincount(c1, z1[:, a] * self.z[f][:, b], minlength=m1)
                g1[:, b, a] = g1[:, a, b]
        self.g1 = g1
        # component-major views of the unit blocks, for _unit_blocks
        self.g1c = {(a, b): np.ascontiguousarray(g1[:, a, b]) for a in range(q1) for b in range(q1)}
        k = W.shape[1]
        z1w = np.empty((m1, q1, k))
        for a in range(q1):
            for j in range(k):
                z1w[:, a, j] = np.bincount(c1, z1[:, a] * W[:, j], minlength=m1)
        self.z1w = z1w
        self.wtw = (W * w[:, None]).T @ W
        if not self.q2:
            self.a22 = np.zeros((0, 0))
            self.z2w = np.zeros((0, k))
            return
        z2w_mat = self._z2.multiply(w[:, None]).tocsr() if weights is not None else self._z2
        self.a22 = (self._z2.T @ z2w_mat).toarray()
        self.z2w = np.asarray(z2w_mat.T @ W)
        # C = Z_1' w Z_2 on the pair pattern, (q1, n_pairs), and as csr (m1 q1, q2)
        rows2 = self._entry_row
        vals2 = np.concatenate(self._vals2) * w[rows2]
        npair = len(self._pair_unit)
        self.cdat = np.empty((q1, npair))
        for a in range(q1):
            self.cdat[a] = np.bincount(
                self._pair_of_entry, self.z[f][rows2, a] * vals2, minlength=npair
            )
        self.c12 = self._c_csr(self.cdat)
        self.c12t = self.c12.T.tocsr()
        self._pair_products(q1)

    def _pair_products(self, q1: int) -> None:
        r"""Precompute :math:`C^\top D C` as one sparse product per θ where that is small.

        For each unit and each two of its (unit, column) pairs *p*, *p'*, the products
        :math:`C_{ap} C_{bp'}` land in :math:`T_{j(p) j(p')}` with weight :math:`D_{i,ab}`.
        With :math:`\sum_i n_i^2` such products (:math:`n_i` the other factors' random
        effects unit *i* shares rows with) below :data:`MAX_PAIR_PRODUCTS`, they are the
        entries of a sparse matrix :math:`P` (:math:`q_2^2` rows, one column per unit and
        entry :math:`ab`, :math:`a \le b`, of :math:`D_i`), and
        :math:`\operatorname{vec}(C^\top D C) = P\,\operatorname{vec}(D)` is one sparse
        matrix-vector product per θ (about three times faster than the sparse
        matrix-matrix product :math:`C^\top (D C)`); above it ``None`` selects that product.
        """
        counts = np.diff(self._pair_ptr)
        total = int((counts.astype(np.int64) ** 2).sum())
        if total > MAX_PAIR_PRODUCTS:
            self._pp = None
            return
        unit = np.repeat(np.arange(len(counts)), counts**2)
        start = np.repeat(self._pair_ptr[:-1], counts**2)
        size = np.repeat(counts, counts**2)
        k = np.arange(total) - np.repeat(np.cumsum(counts**2) - counts**2, counts**2)
        p1 = start + k // np.maximum(size, 1)
        p2 = start + k % np.maximum(size, 1)
        target = self._pair_col[p1] * self.q2 + self._pair_col[p2]
        # D is symmetric: the (a, b) and (b, a) products share the weight D_ab. As one
        # sparse matrix P (q2^2 x n_ab m1), so that vec(T) = P [D_ab over units; ...] is a
        # single sparse product per θ
        m1 = len(counts)
        keys, vals, cols = [], [], []
        for a in range(q1):
            for b in range(a, q1):
                prod = self.cdat[a, p1] * self.cdat[b, p2]
                if b > a:
                    prod += self.cdat[b, p1] * self.cdat[a, p2]
                vals.append(prod)
                cols.append(len(keys) * m1 + unit)
                keys.append((a, b))
        P = sp.csr_matrix(
            (np.concatenate(vals), (np.tile(target, len(keys)), np.concatenate(cols))),
            shape=(self.q2 * self.q2, len(keys) * m1),
        )
        self._pp = (keys, P)

    def _dc(self, d1: np.ndarray):
        r""":math:`D Z_1^\top Z_2` as csr: row (i, a) = sum_b D_i[a, b] C[(i, b), :]."""
        if d1.shape[1] == 1:
            dc = self.cdat * d1[self._pair_unit, 0, 0][None, :]
        else:
            dc = (d1[self._pair_unit] @ self.cdat.T[:, :, None])[:, :, 0].T
        return self._c_csr(dc)

    def _c_csr(self, values: np.ndarray):
        """A csr matrix (m1 q1, q2) on the pattern of Z_1'Z_2 from (q1, n_pairs) values."""
        data = np.empty(self._c_indices.shape[0])
        for a in range(values.shape[0]):
            data[self._csr_pos[a]] = values[a]
        m = self._c_indptr.shape[0] - 1
        return sp.csr_matrix((data, self._c_indices, self._c_indptr), shape=(m, self.q2))

    # ----------------------------------------------------------------- parameters
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

    def _lam2_t(self, theta: np.ndarray, M: np.ndarray) -> np.ndarray:
        r"""Return :math:`\Lambda_2^\top M` for a dense M with q2 rows (level by level)."""
        out = np.empty_like(M)
        for k in self.rest:
            o, qk, mk = self.offsets[k], self.qs[k], self.m[k]
            blk = M[o : o + mk * qk].reshape(mk, qk, -1)
            lam = self.lam(theta, k)
            if qk == 1:
                out[o : o + mk * qk] = (blk * lam[0, 0]).reshape(mk * qk, -1)
            else:
                out[o : o + mk * qk] = (lam.T @ blk).reshape(mk * qk, -1)
        return out

    def _lam2(self, theta: np.ndarray):
        blocks = [sp.kron(sp.identity(self.m[k]), self.lam(theta, k)) for k in self.rest]
        if not blocks:
            return sp.csr_matrix((0, 0))
        return sp.block_diag(blocks, format="csr")

    # ----------------------------------------------------------------- factorisation
    def factor(self, theta: np.ndarray) -> Factorization:
        r"""Factor :math:`A_\theta` and reduce the system to :math:`W^\top V^{-1} W`.

        Raises ``numpy.linalg.LinAlgError`` when a factor is not positive definite.
        """
        theta = np.asarray(theta, dtype=float)
        f = self.first
        q1, m1 = self.qs[f], self.m[f]
        lam1 = self.lam(theta, f)
        logdet, d1 = _unit_blocks(self.g1c, lam1)
        z1w = self.z1w
        if q1 == 1:
            dz1w = (d1[:, 0, 0][:, None] * z1w[:, 0, :]).reshape(m1, -1)
        else:
            dz1w = np.einsum("mab,mbk->mak", d1, z1w).reshape(m1 * q1, -1)
        z1w = z1w.reshape(m1 * q1, -1)
        h = self.wtw - z1w.T @ dz1w
        if self.q2:
            if self._pp is not None:
                keys, P = self._pp
                dvec = np.concatenate([d1[:, a, b] for a, b in keys])
                t = (P @ dvec).reshape(self.q2, self.q2)
            else:
                t = (self.c12t @ self._dc(d1)).toarray()
            r2 = self.z2w - self.c12t @ dz1w
            if self._rest_scalar:
                # every other factor has one effect: Λ_2 is diagonal
                lam2 = np.repeat([self.lam(theta, k)[0, 0] for k in self.rest], self._rest_m)
                s = (self.a22 - t) * lam2[:, None]
                s *= lam2[None, :]
                r2 *= lam2[:, None]
            else:
                s0 = self._lam2_t(theta, self.a22 - t)
                s = np.ascontiguousarray(self._lam2_t(theta, np.ascontiguousarray(s0.T)).T)
                r2 = self._lam2_t(theta, r2)
            s.flat[:: self.q2 + 1] += 1.0
            chol2, info = _potrf(s, lower=1, clean=1)
            if info != 0:
                raise np.linalg.LinAlgError("the Schur complement is not positive definite")
            logdet += 2.0 * float(np.log(np.diag(chol2)).sum())
            g2 = _trsm(chol2, r2)
            h = h - g2.T @ g2
        else:
            chol2 = np.zeros((0, 0))
            r2 = np.zeros((0, self.p + 1))
        return Factorization(logdet, d1, chol2, r2, h)

    def solve(self, theta: np.ndarray, keep: bool = False) -> dict:
        """Profiled deviance and its by-products at ``theta`` (the keys of ``pls.Problem``)."""
        self.n_evals += 1
        fac = self.factor(theta)
        p = self.p
        H = fac.h
        XtVX = H[:p, :p]
        XtVy = H[:p, p]
        yVy = H[p, p]
        # LAPACK directly, as pls.Problem: numpy's wrappers cost more than these p x p solves
        RX, info = _potrf(XtVX, lower=1, clean=1)
        if info != 0:
            return {"deviance": np.inf}
        beta, info = _potrs(RX, XtVy, lower=1)
        if info != 0:
            return {"deviance": np.inf}
        r2 = float(yVy - XtVy @ beta)
        n = self.n
        if not r2 > 0:
            return {"deviance": np.inf}
        if self.reml:
            nu = n - p
            ldx = 2.0 * np.log(np.diag(RX)).sum()
            dev = fac.logdet + ldx + nu * (1.0 + math.log(2.0 * math.pi * r2 / nu))
            sigma2 = r2 / nu
        else:
            dev = fac.logdet + n * (1.0 + math.log(2.0 * math.pi * r2 / n))
            sigma2 = r2 / n
        out = {"deviance": float(dev), "beta": beta, "sigma2": sigma2, "XtVX": XtVX, "r2": r2}
        if keep:
            out["factor"] = fac
        return out

    def deviance(self, theta: np.ndarray) -> float:
        """Return the profiled deviance at *theta* (inf where it cannot be evaluated)."""
        with np.errstate(all="ignore"):
            try:
                d = self.solve(theta)["deviance"]
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                return np.inf
        return d if math.isfinite(d) else np.inf

    # ----------------------------------------------------------------- modes
    def modes(self, theta: np.ndarray, fac: Factorization, beta: np.ndarray) -> list:
        r"""Conditional modes :math:`\hat b = \Lambda\hat u` given β, per level (m, q).

        :math:`b_2 = \Lambda_2 S^{-1} r_2 w` and :math:`b_{1i} = D_i(Z_{1i}^\top W w -
        (Z_1^\top Z_2)_i b_2)` with :math:`w = (-\beta, 1)`; :math:`u = \Lambda^{-1} b`
        where Λ is invertible.
        """
        w = np.concatenate([-np.asarray(beta, dtype=float), [1.0]])
        f = self.first
        q1, m1 = self.qs[f], self.m[f]
        out: list = [None] * len(self.levels)
        rhs = self.z1w.reshape(m1 * q1, -1) @ w
        if self.q2:
            c = _trsm(fac.chol2, fac.r2 @ w)
            u2 = _trsm(np.ascontiguousarray(fac.chol2.T[::-1, ::-1]), c[::-1])[::-1]
            b2 = np.asarray(self._lam2(theta) @ u2).ravel()
            rhs = rhs - np.asarray(self.c12 @ b2).ravel()
            for k in self.rest:
                o, qk = self.offsets[k], self.qs[k]
                out[k] = b2[o : o + self.m[k] * qk].reshape(self.m[k], qk)
        out[f] = np.einsum("mab,mb->ma", fac.d1, rhs.reshape(m1, q1))
        return out

    def conditional_sd(
        self, theta: np.ndarray, fac: Factorization, sigma2: float, chunk: int = 4096
    ) -> list:
        r"""Conditional SDs of the random effects given β (lme4's ``condVar``), per level.

        The diagonal of :math:`\sigma^2\Lambda A_\theta^{-1}\Lambda^\top`: for the first
        factor :math:`D_i + K_i S^{-1} K_i^\top` with :math:`K = D Z_1^\top Z_2 \Lambda_2`,
        for the others :math:`\Lambda_2 S^{-1} \Lambda_2^\top`.
        """
        f = self.first
        q1, m1 = self.qs[f], self.m[f]
        out: list = [None] * len(self.levels)
        var1 = np.diagonal(fac.d1, axis1=1, axis2=2).reshape(-1).copy()
        if self.q2:
            linv = _trsm(fac.chol2, np.eye(self.q2))  # S^{-1} = L^{-T} L^{-1}
            lam2 = self._lam2(theta)
            K = (self._dc(fac.d1) @ lam2).tocsr()
            for start in range(0, m1 * q1, chunk):
                P = np.asarray(K[start : start + chunk] @ linv.T)
                var1[start : start + chunk] += np.einsum("ij,ij->i", P, P)
            M = np.asarray(lam2 @ linv.T)
            var2 = np.einsum("ij,ij->i", M, M)
            for k in self.rest:
                o, qk = self.offsets[k], self.qs[k]
                v = var2[o : o + self.m[k] * qk].reshape(self.m[k], qk)
                out[k] = np.sqrt(np.maximum(v * sigma2, 0.0))
        out[f] = np.sqrt(np.maximum(var1.reshape(m1, q1) * sigma2, 0.0))
        return out


# --------------------------------------------------------------------------- fitting


def _prepare(data: pd.DataFrame, spec: FormulaSpec, *, complete: bool = False):
    """Rows, codes, design and response of a fit; *complete*: *data* are the model's rows."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError("`data` has no rows.")
    if not spec.random:
        raise ValueError(
            f"`formula` {spec.formula!r} has no random part; add e.g. '(1 | patient)'."
        )
    d, n_dropped = (data, 0) if complete else model_rows(data, spec)
    levels = levels_from_spec(spec)
    why = refusal(spec, d)
    if why:
        raise ModelError(
            f"`formula` {spec.formula!r}: {why} Fit with engine='statsmodels', or reduce the "
            "smaller factors (e.g. fewer random slopes on them)."
        )
    codes = _level_codes(d, levels)
    X = fixed_design(spec, d)
    fixed_names = list(X.columns)
    Xv = X.to_numpy(dtype=float)
    check_rank(Xv, fixed_names)
    y = d[spec.response].to_numpy(dtype=float)
    z_cols = [
        [
            np.ones(len(d)) if eff == INTERCEPT else d[eff].to_numpy(dtype=float)
            for eff in lev.effects
        ]
        for lev in levels
    ]
    return d, levels, codes, Xv, fixed_names, y, z_cols, n_dropped


def fit_crossed(
    data: pd.DataFrame,
    formula_or_spec: FormulaSpec | str,
    *,
    reml: bool = True,
    tol: float = 1e-6,
    boundary_tol: float = 1e-4,
    maxiter: int = 1000,
) -> LMMFit:
    r"""Fit a linear mixed model with crossed or partially crossed grouping factors.

    Parameters
    ----------
    data : DataFrame
        Long format, one row per observation; rows missing a model variable are dropped
        and counted.
    formula_or_spec : str or FormulaSpec
        lme4 formula, e.g. ``"outcome ~ session + (1 + session | patient) + (1 | rater)"``.
        Any grouping factors, nested or not, each with random intercepts and slopes,
        correlated (``|``) or not (``||``).
    reml : bool, default True
    tol, boundary_tol, maxiter
        As :func:`allianceflow.models.engine.fit_lmm` (the same optimiser and check).

    Returns
    -------
    LMMFit
        As :func:`allianceflow.models.engine.fit_lmm`; ``ranef`` holds every level's
        conditional modes and conditional SDs (lme4's ``ranef`` and ``condVar``, exact for
        crossed factors).

    Raises
    ------
    TypeError, ValueError, KeyError
        Bad ``data``, no random part, a missing column.
    ModelError
        Rank-deficient fixed effects, no complete rows, or more than :data:`MAX_SCHUR`
        random effects outside the largest grouping factor.

    Notes
    -----
    The deviance and its sparse factorisation are described in the module docstring.
    :math:`\operatorname{vcov}(\hat\beta) = \hat\sigma^2 (R_X^\top R_X)^{-1}`
    (lme4's ``vcov``); variance components :math:`\hat\sigma^2\Lambda_k\Lambda_k^\top`.
    Agrees with lme4 1.1 (``lmer``) to 1e-6 relative in log-likelihood, 1e-4 in fixed
    effects and 1e-3 relative in SEs and variances on crossed, partially crossed and
    random-slope designs, REML and ML (``tests/test_crossed.py``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(2)
    >>> d = pd.DataFrame({"patient": np.repeat(np.arange(40), 6),
    ...                   "rater": rng.integers(0, 8, 240)})
    >>> d["y"] = (rng.normal(0, 1, 40)[d["patient"]] + rng.normal(0, 0.7, 8)[d["rater"]]
    ...           + rng.normal(0, 1, 240))
    >>> fit = fit_crossed(d, "y ~ 1 + (1 | patient) + (1 | rater)")
    >>> fit.converged, fit.n_groups
    (True, {'patient': 40, 'rater': 8})
    """
    spec = check_spec(formula_or_spec)
    if not isinstance(reml, (bool, np.bool_)):
        raise TypeError(f"`reml` must be True or False; got {reml!r}.")
    for name, val in (("tol", tol), ("boundary_tol", boundary_tol)):
        if not (isinstance(val, (int, float)) and val > 0):
            raise ValueError(f"`{name}` must be a positive number; got {val!r}.")
    return _fit_crossed(_prepare(data, spec), spec, reml, tol, boundary_tol, maxiter)


def _fit_crossed(prepared, spec, reml, tol, boundary_tol, maxiter) -> LMMFit:
    d, levels, codes, X, fixed_names, y, z_cols, n_dropped = prepared
    prob = CrossedProblem(levels, codes, z_cols, X, y, bool(reml))
    with _blas_threads(1 if prob.q2 < SINGLE_THREAD_BELOW else None):
        return _fit(
            prob, spec, d, levels, X, fixed_names, n_dropped, reml, tol, boundary_tol, maxiter
        )


def _fit(prob, spec, d, levels, X, fixed_names, n_dropped, reml, tol, boundary_tol, maxiter):
    scale = prob.theta_scale()
    memo: dict[bytes, float] = {}

    def f(phi):
        key = np.asarray(phi, dtype=float).tobytes()
        if key not in memo:
            memo[key] = prob.deviance(phi / scale)
        return memo[key]

    phi0 = np.where(np.isfinite(prob.lower), 1.0, 0.0)
    opt = minimize_bounded(
        f,
        phi0,
        prob.lower,
        unscale=scale,
        boundary_tol=boundary_tol,
        tol=tol,
        maxiter=maxiter,
        theta_slices=prob.theta_slices,
    )
    theta = opt.x / scale
    on_bound = opt.on_bound
    max_grad = (
        float(np.max(np.abs((opt.gradient * scale)[~on_bound]))) if (~on_bound).any() else 0.0
    )
    decrement = opt.decrement
    converged = bool(
        opt.hessian_positive_definite
        and math.isfinite(decrement)
        and decrement < tol
        and opt.kkt_ok
    )
    warn: list[str] = []
    if not opt.hessian_positive_definite:
        warn.append(
            "the deviance is not curved at the solution (finite-difference Hessian of the free "
            "variance parameters not positive definite): the optimum is not unique."
        )
    if not converged:
        warn.append(
            f"convergence check failed (Newton decrement {decrement:.3g}, tolerance {tol:g}; "
            f"KKT at the boundary {'ok' if opt.kkt_ok else 'violated'}); do not report these "
            "estimates."
        )
    sol = prob.solve(theta, keep=True)
    if "beta" not in sol:
        raise ModelError(
            f"`formula` {spec.formula!r}: the likelihood cannot be evaluated at any variance "
            f"parameters for these {prob.n} rows (the fixed effects reproduce the response "
            "exactly, or the cross-products are singular); check the response and the terms."
        )
    beta, sigma2 = sol["beta"], float(sol["sigma2"])
    cov_fe = sigma2 * np.linalg.inv(sol["XtVX"])
    dev = float(sol["deviance"])
    n = prob.n
    k = len(beta) + prob.n_theta + 1
    cov_re: dict[str, pd.DataFrame] = {}
    boundary: list[str] = []
    level_variance: dict[str, float] = {}
    for li, lev in enumerate(levels):
        Lam = prob.lam(theta, li)
        cov = sigma2 * Lam @ Lam.T
        cov_re[lev.label] = pd.DataFrame(cov, index=list(lev.effects), columns=list(lev.effects))
        for j, eff in enumerate(lev.effects):
            if abs(Lam[j, j]) < boundary_tol:
                boundary.append(f"{eff} | {lev.label}")
        if lev.q > 1 and not any(abs(Lam[j, j]) < boundary_tol for j in range(lev.q)):
            ev = np.linalg.eigvalsh(Lam @ Lam.T)
            if (
                ev.min() < boundary_tol**2 * max(ev.max(), 1e-300)
                and lev.pattern[np.tril_indices(lev.q, -1)].any()
            ):
                boundary.append(f"correlation | {lev.label}")
        zl = prob.z[li]
        level_variance[lev.label] = float(np.mean(np.sum((zl @ cov) * zl, axis=1)))
    if boundary:
        warn.append(
            "singular fit: random-effect variance at the boundary for "
            + ", ".join(boundary)
            + "; the model is over-parameterised for these data."
        )
    fac = sol["factor"]
    b_levels = prob.modes(theta, fac, beta)
    ses = prob.conditional_sd(theta, fac, sigma2)
    ranef: dict[str, pd.DataFrame] = {}
    for li, lev in enumerate(levels):
        _, lab = factor_codes(d, lev.factor)
        frame = lab.reset_index(drop=True)
        for j, eff in enumerate(lev.effects):
            frame[eff] = b_levels[li][:, j]
        for j, eff in enumerate(lev.effects):
            frame[f"se_{eff}"] = ses[li][:, j]
        ranef[lev.label] = frame
    fixed_pred = X @ beta
    return LMMFit(
        formula=spec.formula,
        reml=bool(reml),
        n_obs=int(n),
        n_dropped_missing=n_dropped,
        n_groups={lev.label: int(prob.m[li]) for li, lev in enumerate(levels)},
        fixed_names=fixed_names,
        fe_params=beta,
        cov_fe=cov_fe,
        sigma2=sigma2,
        cov_re=cov_re,
        theta=theta,
        loglik=float(-0.5 * dev),
        deviance=dev,
        aic=float(dev + 2 * k),
        bic=float(dev + k * math.log(n)),
        n_params=int(k),
        ranef=ranef,
        var_fixed=float(np.var(fixed_pred, ddof=1)) if n > 1 else 0.0,
        level_variance=level_variance,
        converged=converged,
        optimizer=opt.optimizer,
        n_evaluations=int(prob.n_evals),
        max_abs_gradient=max_grad,
        newton_decrement=decrement,
        hessian_positive_definite=bool(opt.hessian_positive_definite),
        boundary=boundary,
        warnings=warn,
    )


def fit_backend(
    rows: pd.DataFrame, spec: FormulaSpec, *, reml: bool, boundary_tol: float
) -> BackendFit:
    """Fit the complete *rows* with :func:`fit_crossed` for ``allianceflow.models.fit_model``.

    Returns the :class:`~allianceflow.models.result.BackendFit` with the keys of the nested
    engine's. The denominator df of every fixed term is :math:`n - p` (the containment rule
    assumes nested factors; statsmodels' crossed fits report the same). Satterthwaite and
    Kenward–Roger df come from ``fit_model(..., ddf=...)`` as for nested models
    (:mod:`allianceflow.models.ddf`, from this fit's variance components); with crossed
    factors the marginal covariance is a single block of all rows, whose Woodbury
    computation holds dense matrices of every random effect (every level of every factor),
    so they are computed while that needs at most ``DDF_MAX_MEMORY`` (1 GiB, about 3,000
    random effects), and beyond that ``fit_model`` keeps the :math:`n - p` df and says so in
    a warning (a sparse Satterthwaite from finite differences of this deviance, as lmerTest
    computes it, is not implemented).
    """
    fit = _fit_crossed(
        _prepare(rows, spec, complete=True), spec, bool(reml), 1e-6, boundary_tol, 1000
    )
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
    modes = []
    outer = order[0]
    if len(fit.ranef[outer]) <= 5000:
        frame = fit.ranef[outer]
        k = len(outer.split(":"))
        terms = [c for c in frame.columns[k:] if not str(c).startswith("se_")]
        level = frame[list(frame.columns[:k])].astype(str).agg(":".join, axis=1)
        frame = frame.assign(_level=level).sort_values("_level", kind="mergesort")
        for lev_name, *vals in zip(
            frame["_level"],
            *(frame[t] for t in terms),
            *(frame[f"se_{t}"] for t in terms),
            strict=True,
        ):
            for j, t in enumerate(terms):
                modes.append((outer, lev_name, t, float(vals[j]), float(vals[len(terms) + j])))
    warnings_ = fit_warnings(fit)
    df = float(fit.n_obs - len(fit.fixed_names))
    return BackendFit(
        engine=ENGINE,
        n_obs=int(fit.n_obs),
        n_groups={g: int(fit.n_groups[g]) for g in dict.fromkeys(order)},
        fixed_names=list(fit.fixed_names),
        beta=fit.fe_params,
        cov_fe=fit.cov_fe,
        df={c: df for c in fit.fixed_names},
        df_default=df,
        sigma2=float(fit.sigma2),
        random=random,
        covariances=covs,
        level_variance={g: fit.level_variance[g] for g in dict.fromkeys(order)},
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
