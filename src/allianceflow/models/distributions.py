r"""Tail probabilities and quantiles of the normal, *t*, :math:`\chi^2` and *F* distributions.

The models' tests and intervals need six numbers: :math:`z_{.975}`, two-sided normal and
*t* p values, *t* quantiles, and :math:`\chi^2` and *F* upper tails. ``scipy.stats``
computes each of them with one ``scipy.special`` function (the Cephes / Boost routines
named below), but importing ``scipy.stats`` costs about 1.5 CPU-seconds (it loads
``scipy.optimize``, ``scipy.spatial``, ``scipy.interpolate``, …), more than fitting most
models of a study; every pipeline job that fits or reports a model paid it. These functions
call the same ``scipy.special`` routines directly, with ``scipy.stats``' handling of the
support's ends and of invalid parameters, so they return the very same floats
(``tests/test_models.py`` compares them bit for bit on a grid that includes infinite and
invalid arguments). ``scipy.special`` itself is imported on first use, so that a job which
only reads fitted models (tables, figures) does not load it.

* :func:`norm_sf` :math:`= 1 - \Phi(x)` = ``ndtr(-x)`` (``scipy.stats.norm.sf``);
  :func:`norm_ppf` :math:`= \Phi^{-1}(q)` = ``ndtri(q)`` (``norm.ppf``).
* :func:`t_sf` :math:`= P(T_\nu > x)` = ``stdtr(nu, -x)`` (``t.sf``); :func:`t_ppf` = the
  *q* quantile, ``stdtrit(nu, q)`` (``t.ppf``); :math:`\nu = \infty` is the normal.
* :func:`chi2_sf` :math:`= P(\chi^2_k > x)` = ``chdtrc(k, x)`` (``chi2.sf``), the
  regularised upper incomplete gamma :math:`Q(k/2, x/2)`.
* :func:`f_sf` :math:`= P(F_{d_1, d_2} > x)` = ``fdtrc(d1, d2, x)`` (``f.sf``), the
  regularised incomplete beta :math:`I_{d_2/(d_2 + d_1 x)}(d_2/2, d_1/2)`.

Examples
--------
>>> round(norm_ppf(0.975), 6), round(2 * t_sf(2.0, 10), 6), round(chi2_sf(3.841459, 1), 6)
(1.959964, 0.073388, 0.05)
"""

from __future__ import annotations

import math

__all__ = ["norm_sf", "norm_ppf", "t_sf", "t_ppf", "chi2_sf", "f_sf"]

_NAN = float("nan")


def norm_sf(x: float) -> float:
    r"""Upper tail of the standard normal, :math:`1 - \Phi(x)` (``scipy.stats.norm.sf``).

    >>> norm_sf(1.959963984540054)
    0.025
    """
    from scipy import special

    return float(special.ndtr(-x))


def norm_ppf(q: float) -> float:
    r"""Quantile of the standard normal, :math:`\Phi^{-1}(q)` (``scipy.stats.norm.ppf``).

    >>> norm_ppf(0.975)
    1.959963984540054
    """
    from scipy import special

    return float(special.ndtri(q))


def t_sf(x: float, df: float) -> float:
    r"""Upper tail of Student's *t* on *df* degrees of freedom (``scipy.stats.t.sf``).

    NaN when *df* is not positive; *df* = inf gives the normal tail.

    >>> round(t_sf(2.0, 10), 8), t_sf(1.0, -1.0)
    (0.03669402, nan)
    """
    from scipy import special

    return float(special.stdtr(df, -x))


def t_ppf(q: float, df: float) -> float:
    r"""The *q* quantile of Student's *t* on *df* degrees of freedom (``scipy.stats.t.ppf``).

    >>> round(t_ppf(0.975, 10), 8), round(t_ppf(0.975, float("inf")), 8), t_ppf(0.0, 5)
    (2.22813885, 1.95996398, -inf)
    """
    if q == 0 and df > 0:  # stdtrit gives +inf at 0; the quantile is -inf (scipy.stats)
        return -math.inf
    from scipy import special

    return float(special.stdtrit(df, q))


def chi2_sf(x: float, df: float) -> float:
    r"""Upper tail of :math:`\chi^2` on *df* degrees of freedom (``scipy.stats.chi2.sf``).

    1 at and below 0 (the support's lower end), 0 at +inf, NaN for NaN *x* or *df* not
    positive.

    >>> round(chi2_sf(3.841459, 1), 8), chi2_sf(-1.0, 2), chi2_sf(1.0, 0)
    (0.04999999, 1.0, nan)
    """
    if not df > 0 or math.isnan(x):
        return _NAN
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    from scipy import special

    return float(special.chdtrc(df, x))


def f_sf(x: float, dfn: float, dfd: float) -> float:
    r"""Upper tail of *F* on *dfn* and *dfd* degrees of freedom (``scipy.stats.f.sf``).

    1 at and below 0, 0 at +inf, NaN for NaN *x* or a df not positive.

    >>> round(f_sf(4.964603, 1, 10), 6), f_sf(0.0, 2, float("inf"))
    (0.05, 1.0)
    """
    if not (dfn > 0 and dfd > 0) or math.isnan(x):
        return _NAN
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    from scipy import special

    return float(special.fdtrc(dfn, dfd, x))
