"""Scoring of instruments and their reliability (alpha and omega).

``score_sessions`` turns the item columns of the canonical session table into totals,
subscale scores, answered-item counts and proration flags, following each instrument's
YAML file (see :mod:`allianceflow.instruments`). ``reliability`` reports Cronbach's alpha
(raw, with a 95% confidence interval, and standardised, as psych's ``raw_alpha`` and
``std.alpha``) and McDonald's omega total with a 95% confidence interval, per instrument,
scale and occasion (first session, and pooled over sessions).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from allianceflow._checks import check_columns
from allianceflow.instruments import Instrument, load_instrument

log = logging.getLogger(__name__)

__all__ = [
    "score_sessions",
    "reliability",
    "cronbach_alpha",
    "omega_total",
    "score_columns",
    "RELIABILITY_COLUMNS",
    "ALPHA_MISSING",
]

Occasion = Literal["first", "pooled"]
_OCCASIONS = ("first", "pooled")
AlphaMissing = Literal["listwise", "pairwise"]
#: How alpha treats rows with a missing item: complete cases, or psych's pairwise covariances.
ALPHA_MISSING: tuple[str, ...] = ("listwise", "pairwise")

RELIABILITY_COLUMNS = [
    "instrument",
    "scale",
    "occasion",
    "n",
    "k",
    "alpha",
    "alpha_ci_low",
    "alpha_ci_high",
    "std_alpha",
    "omega",
    "omega_ci_low",
    "omega_ci_high",
    "note",
]


# --------------------------------------------------------------------------- helpers


def _resolve(instruments) -> list[Instrument]:
    """Turn the `instruments` argument into a list of Instrument objects."""
    if isinstance(instruments, (str, Instrument)):
        instruments = [instruments]
    out: list[Instrument] = []
    if isinstance(instruments, Mapping):
        for key, spec in instruments.items():
            if spec is None:
                out.append(load_instrument(key))
            elif isinstance(spec, Instrument):
                out.append(spec)
            elif isinstance(spec, Mapping) and "items" in spec:
                if spec.get("id", key) != key:
                    raise ValueError(
                        f"`instruments[{key!r}]` defines an instrument with id "
                        f"{spec['id']!r}; the key and the id must agree."
                    )
                out.append(load_instrument({**spec, "id": key}))
            elif isinstance(spec, Mapping):
                out.append(load_instrument(key, overrides=spec))
            else:
                raise ValueError(
                    f"`instruments[{key!r}]` must be None, an override mapping, a full "
                    f"definition or an Instrument; got {type(spec).__name__}."
                )
    elif isinstance(instruments, Iterable):
        for spec in instruments:
            out.append(load_instrument(spec))
    else:
        raise ValueError(
            "`instruments` must be an id, a list of ids / definitions / Instrument objects, "
            f"or a mapping id -> overrides; got {type(instruments).__name__}."
        )
    if not out:
        raise ValueError("`instruments` is empty; name at least one instrument.")
    ids = [i.id for i in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"`instruments` names {dup} more than once.")
    return out


def _check_columns(data: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    check_columns(data, *columns, name="data", what=what)


def _item_matrix(data: pd.DataFrame, inst: Instrument) -> np.ndarray:
    """Items as a float matrix, range-checked and reverse-keyed (NaN = missing)."""
    cols = list(inst.item_columns)
    _check_columns(data, cols, f"instrument {inst.id!r}")
    for c in cols:
        if not (pd.api.types.is_numeric_dtype(data[c]) or data[c].isna().all()):
            raise TypeError(
                f"Column {c!r} of instrument {inst.id!r} must be numeric; got dtype "
                f"{data[c].dtype}. Map response labels to numbers in the clean stage."
            )
    x = data[cols].astype("float64").to_numpy(dtype=float, na_value=np.nan, copy=True)
    if inst.not_applicable is not None:
        # "Does not apply" counts as a missing item (see _not_applicable_counts).
        x[x == inst.not_applicable] = np.nan
    lo, hi = inst.response_min, inst.response_max
    bad = ~np.isnan(x) & ((x < lo) | (x > hi))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"Column {cols[c]!r} (instrument {inst.id!r}) has value {x[r, c]:g} at row "
            f"{data.index[r]!r}; allowed range is {lo:g} to {hi:g}. "
            f"{int(bad.sum())} value(s) are out of range in all."
        )
    for item in inst.reverse:
        x[:, item - 1] = lo + hi - x[:, item - 1]
    return x


def score_columns(inst: Instrument | str) -> list[str]:
    """Names of the columns :func:`score_sessions` adds for one instrument.

    Examples
    --------
    >>> score_columns("wai_sr")  # doctest: +NORMALIZE_WHITESPACE
    ['wai_sr_total', 'wai_sr_task', 'wai_sr_bond', 'wai_sr_goal', 'wai_sr_n_items',
     'wai_sr_prorated']
    """
    inst = load_instrument(inst) if not isinstance(inst, Instrument) else inst
    return (
        [f"{inst.id}_total"]
        + [f"{inst.id}_{s}" for s in inst.subscales]
        + [f"{inst.id}_n_items", f"{inst.id}_prorated"]
        + ([f"{inst.id}_n_not_applicable"] if inst.not_applicable is not None else [])
    )


def _not_applicable_counts(data: pd.DataFrame, inst: Instrument) -> np.ndarray:
    """Number of "does not apply" answers (``inst.not_applicable``) per row."""
    x = data[list(inst.item_columns)].astype("float64").to_numpy(dtype=float, na_value=np.nan)
    return (x == inst.not_applicable).sum(axis=1).astype("int64")


def _scale_item_mean(x: np.ndarray, max_missing: int, rule: str):
    """Score one scale by the item-mean proration rule. Returns (score, prorated)."""
    k = x.shape[1]
    answered = ~np.isnan(x)
    n_ans = answered.sum(axis=1)
    n_miss = k - n_ans
    total = np.nansum(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n_ans
    ok = (n_ans > 0) & (n_miss <= max_missing)
    if rule == "sum":
        # Complete rows keep their exact sum; prorated rows are mean x k.
        value = np.where(n_miss == 0, total, mean * k)
    else:
        value = mean
    score = np.where(ok, value, np.nan)
    return score, ok & (n_miss > 0)


def _round_half_up(v: np.ndarray) -> np.ndarray:
    return np.floor(v + 0.5)


def _score_instrument(x: np.ndarray, inst: Instrument) -> dict[str, np.ndarray]:
    n_ans = (~np.isnan(x)).sum(axis=1)
    out: dict[str, np.ndarray] = {}
    prorated = np.zeros(x.shape[0], dtype=bool)
    if inst.proration_method == "item_mean":
        total, p = _scale_item_mean(x, inst.max_missing, inst.total_rule)
        out["total"] = total
        prorated |= p & ~np.isnan(total)
        for name, items in inst.subscales.items():
            idx = [i - 1 for i in items]
            s, p = _scale_item_mean(x[:, idx], inst.subscale_max_missing, inst.total_rule)
            out[name] = s
            prorated |= p & ~np.isnan(s)
    else:  # subscale_item_mean_rounded (OQ-45 scoring sheet)
        imputed = x.copy()
        sub_ok = np.ones(x.shape[0], dtype=bool)
        for name, items in inst.subscales.items():
            idx = [i - 1 for i in items]
            sub = x[:, idx]
            n_sub = (~np.isnan(sub)).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                fill = _round_half_up(np.nansum(sub, axis=1) / n_sub)
            filled = np.where(np.isnan(sub), fill[:, None], sub)
            imputed[:, idx] = filled
            ok = (n_sub > 0) & (len(idx) - n_sub <= inst.subscale_max_missing)
            sub_ok &= n_sub > 0
            value = filled.sum(axis=1) if inst.total_rule == "sum" else filled.mean(axis=1)
            out[name] = np.where(ok, value, np.nan)
            prorated |= ok & (n_sub < len(idx))
        ok = sub_ok & (inst.n_items - n_ans <= inst.max_missing)
        value = imputed.sum(axis=1) if inst.total_rule == "sum" else imputed.mean(axis=1)
        out["total"] = np.where(ok, value, np.nan)
        prorated |= ok & (n_ans < inst.n_items)
    out["n_items"] = n_ans.astype("int64")
    out["prorated"] = prorated
    return out


# --------------------------------------------------------------------------- scoring


def score_sessions(data: pd.DataFrame, instruments, *, prorate: bool = True) -> pd.DataFrame:
    r"""Score instruments on the canonical session table.

    Parameters
    ----------
    data : pandas.DataFrame
        Long table, one row per patient x session x informant, with item columns
        ``<id>_1`` ... ``<id>_<k>``. Other columns (``informant`` etc.) are carried along.
    instruments : str, Instrument, list or mapping
        Instrument ids, study-defined definitions (mappings) or :class:`Instrument`
        objects; or a mapping ``id -> overrides`` (``{"ors": {"cutoff": 28}}``), where a
        value that holds ``items`` is a full study-defined definition.
    prorate : bool, default True
        If False, any missing item makes the scale missing (``max_missing`` = 0).

    Returns
    -------
    pandas.DataFrame
        A new table (``data``'s columns, shared with it, not copied) with, per
        instrument: ``<id>_total`` (float), ``<id>_<sub>`` for each subscale (float),
        ``<id>_n_items`` (answered items, int) and ``<id>_prorated`` (bool: some
        reported score of the row was prorated); for an
        instrument with a "does not apply" code (``Instrument.not_applicable``, e.g. the
        CARE Measure), ``<id>_n_not_applicable`` (int: such answers in the row).

    Raises
    ------
    KeyError
        An item column is missing (the message lists the columns and the closest match).
    TypeError
        An item column is not numeric.
    ValueError
        An item value lies outside the response range, an output column already exists,
        or an instrument definition is invalid.

    Warns
    -----
    UserWarning
        When some rows were administered (at least one item answered) but have more
        missing items than the proration rule allows; their scores are NaN. Rows with
        every item missing (not administered) get NaN silently.

    Notes
    -----
    Reverse-keyed items are scored :math:`x' = \min + \max - x`. With :math:`k` items of
    which :math:`m \le` ``max_missing`` are missing, the ``item_mean`` rule gives

    .. math:: S = \frac{k}{k - m} \sum_{j\ \mathrm{answered}} x_j \quad(\text{sum rule}),
              \qquad \bar{x} = \frac{1}{k - m} \sum_{j\ \mathrm{answered}} x_j
              \quad(\text{mean rule}),

    i.e. the CORE "item mean x k" rule (CORE System Trust). The ``subscale_item_mean_rounded``
    rule (OQ-45 scoring sheet) replaces each missing item by the mean of the answered
    items of its subscale rounded half up, then sums. Subscales use
    ``subscale_max_missing``. A "does not apply" answer counts as a missing item here (the
    CARE Measure's rule: up to two "not applicable" or missing answers are replaced by the
    mean of the remaining items, more than two leave the score missing; Mercer et al. 2004).

    Examples
    --------
    Items 2 and 3 of the CORE-10 are reverse-keyed (4 - x). Patient b skipped item 2:
    9 answered items sum to 4 + 0 + 7 * 2 = 18, prorated to 18 / 9 * 10 = 20.

    >>> import pandas as pd
    >>> d = pd.DataFrame({"patient": ["a", "b"], "session": [1, 1],
    ...                   "core10_1": [2, 4], "core10_2": [4, None], "core10_3": [3, 4],
    ...                   **{f"core10_{i}": [1, 2] for i in range(4, 11)}})
    >>> s = score_sessions(d, ["core10"])
    >>> s[["core10_total", "core10_n_items", "core10_prorated"]]
       core10_total  core10_n_items  core10_prorated
    0          10.0              10            False
    1          20.0               9             True
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    insts = _resolve(instruments)
    # A shallow copy: the score columns are added to a new table whose other columns are
    # those of *data* (not copied: ~0.7 s at 10^6 rows); *data* itself is left as it is.
    out = data.copy(deep=False)
    for inst in insts:
        new = score_columns(inst)
        clash = [c for c in new if c in data.columns]
        if clash:
            raise ValueError(
                f"`data` already has score column(s) {clash} for instrument {inst.id!r}; "
                "score the cleaned item table, not an already scored one."
            )
        x = _item_matrix(data, inst)
        if not prorate:
            inst = _no_proration(inst)
        res = _score_instrument(x, inst)
        administered = res["n_items"] > 0
        partial = administered & np.isnan(res["total"])
        if partial.any():
            warnings.warn(
                f"{inst.id}: {int(partial.sum())} row(s) answered some but not enough items "
                f"(at most {inst.max_missing} may be missing); their {inst.id}_total is NaN.",
                UserWarning,
                stacklevel=2,
            )
        out[f"{inst.id}_total"] = res["total"]
        for name in inst.subscales:
            out[f"{inst.id}_{name}"] = res[name]
        out[f"{inst.id}_n_items"] = res["n_items"]
        out[f"{inst.id}_prorated"] = res["prorated"]
        if inst.not_applicable is not None:
            out[f"{inst.id}_n_not_applicable"] = _not_applicable_counts(data, inst)
    return out


def _no_proration(inst: Instrument) -> Instrument:
    from dataclasses import replace

    return replace(inst, max_missing=0, subscale_max_missing=0)


# --------------------------------------------------------------------------- omega


def _fit_one_factor(S: np.ndarray, start: np.ndarray | None = None):
    r"""Maximum-likelihood one-factor model of a covariance matrix.

    Minimises :math:`F = \log|\Sigma| + \mathrm{tr}(S\Sigma^{-1})` with
    :math:`\Sigma = \lambda\lambda^\top + \Psi` (Joreskog, 1967), on the correlation
    scale (ML is scale invariant) with analytic gradient; uniquenesses are kept positive
    by a log parameterisation. Returns loadings, uniquenesses (covariance scale) and the
    optimiser's parameter vector (for warm starts).
    """
    from scipy import optimize  # only reliability fits factor models; scoring does not

    d = np.sqrt(np.diag(S))
    R = S / np.outer(d, d)
    k = R.shape[0]
    if start is None:
        w, v = np.linalg.eigh(R)
        lam0 = v[:, -1] * np.sqrt(max(w[-1], 1e-6))
        if lam0.sum() < 0:
            lam0 = -lam0
        lam0 = np.clip(lam0, -0.95, 0.95)
        psi0 = np.clip(1.0 - lam0**2, 0.05, None)
        start = np.concatenate([lam0, np.log(psi0)])

    def fun(theta):
        lam = theta[:k]
        psi = np.exp(theta[k:])
        sigma = np.outer(lam, lam) + np.diag(psi)
        sign, logdet = np.linalg.slogdet(sigma)
        if sign <= 0:
            return np.inf, np.zeros_like(theta)
        inv = np.linalg.inv(sigma)
        f = logdet + np.sum(R * inv)
        g = inv - inv @ R @ inv
        grad = np.concatenate([2.0 * g @ lam, np.diag(g) * psi])
        return f, grad

    # BFGS on the unconstrained (loading, log-uniqueness) parameters; scipy's L-BFGS-B
    # was ~10x slower here for the same optimum.
    res = optimize.minimize(
        fun, start, jac=True, method="BFGS", options={"maxiter": 1000, "gtol": 1e-8}
    )
    lam = res.x[:k] * d
    psi = np.exp(res.x[k:]) * d**2
    return lam, psi, res.x


def _omega_from_cov(S: np.ndarray, start=None):
    lam, psi, theta = _fit_one_factor(S, start)
    common = lam.sum() ** 2
    return common / (common + psi.sum()), theta


def cronbach_alpha(
    items: pd.DataFrame, *, missing: AlphaMissing = "listwise", ci: float = 0.95
) -> dict[str, float]:
    r"""Cronbach's alpha (raw, with Feldt's CI) and standardised alpha, as psych's ``alpha``.

    Parameters
    ----------
    items : pandas.DataFrame
        One column per item (already reverse-keyed), one row per response; at least two
        items and two rows.
    missing : {'listwise', 'pairwise'}, default 'listwise'
        ``'listwise'``: only rows with every item answered (psych's ``use =
        "complete.obs"``, pingouin's ``nan_policy = "listwise"``), so alpha describes one
        set of respondents. ``'pairwise'``: each item covariance from the rows answering
        both items (psych's default ``use = "pairwise"``), so every answer counts but the
        covariance matrix mixes respondents and need not be positive definite.
    ci : float, default 0.95
        Confidence level of Feldt's interval.

    Returns
    -------
    dict
        ``alpha, alpha_ci_low, alpha_ci_high, std_alpha, n`` where ``n`` is the number of
        rows Feldt's interval uses: the complete cases (listwise) or every row with at least
        one answered item (pairwise, as psych's ``alpha.ci(n.obs = nrow(x))``).

    Raises
    ------
    ValueError
        A bad ``missing`` or ``ci``; fewer than two items or two usable rows.

    Notes
    -----
    With *C* the item covariance matrix (listwise or pairwise) and
    :math:`R = D^{-1/2} C D^{-1/2}` its correlation matrix (R's ``cov2cor``),

    .. math::

        \alpha = \frac{k}{k-1}\Bigl(1 - \frac{\operatorname{tr} C}{\mathbf 1^\top C
        \mathbf 1}\Bigr), \qquad
        \alpha_{std} = \frac{k}{k-1}\Bigl(1 - \frac{k}{\mathbf 1^\top R \mathbf 1}\Bigr)
        = \frac{k \bar r}{1 + (k-1)\bar r},

    :math:`\bar r` the mean inter-item correlation; standardised alpha is the alpha of the
    z-scored items, the one to report when items have different ranges. The raw alpha and
    Feldt's (1987) interval :math:`1 - (1-\alpha) F_{n-1, (n-1)(k-1)}` quantiles are
    :func:`pingouin.cronbach_alpha` (interval rounded to 3 decimals). Agrees with psych
    2.2.9 ``alpha(x, use = "complete.obs" | "pairwise")`` (``raw_alpha``, ``std.alpha``)
    to 1e-12 on pingouin's ``cronbach_wide_missing`` data (tests/test_score.py).
    Listwise on those 12 respondents (3 incomplete) gives .802, pairwise .733.

    References
    ----------
    Revelle, W. (2024). *psych: Procedures for psychological, psychometric, and personality
    research* (R package version 2.2.9). Northwestern University.

    Examples
    --------
    >>> import pandas as pd
    >>> x = pd.DataFrame({"a": [1, 2, 3, 4, 5], "b": [2, 2, 4, 4, 5], "c": [1, 3, 3, 5, 4.0]})
    >>> res = cronbach_alpha(x)
    >>> round(res["alpha"], 4), round(res["std_alpha"], 4)
    (0.9364, 0.9374)
    """
    import pingouin as pg

    if missing not in ALPHA_MISSING:
        raise ValueError(f"`missing` must be 'listwise' or 'pairwise'; got {missing!r}.")
    if not 0 < ci < 1:
        raise ValueError(f"`ci` must lie between 0 and 1; got {ci!r}.")
    if not isinstance(items, pd.DataFrame):
        raise TypeError(f"`items` must be a pandas DataFrame; got {type(items).__name__}.")
    x = items.astype(float)
    x = x.dropna(how="any") if missing == "listwise" else x.dropna(how="all")
    k = x.shape[1]
    if k < 2 or len(x) < 2:
        raise ValueError(
            f"`items` must hold at least 2 items and 2 usable rows; got {k} items and "
            f"{len(x)} rows ({missing})."
        )
    a, (lo, hi) = pg.cronbach_alpha(data=x, nan_policy=missing, ci=ci)
    cov = x.cov().to_numpy()
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    std = k / (k - 1) * (1 - k / corr.sum())
    return {
        "alpha": float(a),
        "alpha_ci_low": float(lo),
        "alpha_ci_high": float(hi),
        "std_alpha": float(std),
        "n": int(len(x)),
    }


def omega_total(items: pd.DataFrame) -> float:
    r"""McDonald's omega total of the unit-weighted sum of ``items``.

    Parameters
    ----------
    items : pandas.DataFrame
        One column per item (already reverse-keyed), one row per respondent; rows with
        any missing item are dropped (listwise).

    Returns
    -------
    float

    Notes
    -----
    Estimator: a one-factor model fitted by maximum likelihood to the sample covariance
    matrix (Joreskog, 1967), then

    .. math:: \omega_t = \frac{(\sum_j \lambda_j)^2}{(\sum_j \lambda_j)^2 + \sum_j \psi_j}

    with model-implied total variance in the denominator (McDonald, 1999, ch. 6). For
    tau-equivalent items it equals coefficient alpha. This is the ``omega`` of a
    single-factor CFA as in semTools::compRelSEM, not psych::omega's bifactor omega.

    References
    ----------
    McDonald, R. P. (1999). *Test theory: A unified treatment*. Erlbaum.
    Joreskog, K. G. (1967). Some contributions to maximum likelihood factor analysis.
    *Psychometrika*, 32, 443-482.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(1)
    >>> f = rng.normal(size=2000)
    >>> items = pd.DataFrame({f"i{j}": f + rng.normal(size=2000) for j in range(4)})
    >>> round(omega_total(items), 2)   # population value 16 / (16 + 4) = 0.80
    0.8
    """
    x = items.dropna().to_numpy(dtype=float)
    if x.shape[1] < 2 or x.shape[0] < 3:
        raise ValueError(
            f"`items` needs at least 2 columns and 3 complete rows; got {x.shape[1]} "
            f"column(s) and {x.shape[0]} complete row(s)."
        )
    return float(_omega_from_cov(np.cov(x, rowvar=False))[0])


# --------------------------------------------------------------------------- reliability


def _occasion_positions(
    frame: pd.DataFrame, occasion: str, patient: str, session: str
) -> np.ndarray:
    """Row positions of ``frame`` that belong to ``occasion``."""
    if occasion == "pooled":
        return np.arange(len(frame))
    first = frame.groupby(patient, observed=True)[session].transform("min")
    return np.flatnonzero((frame[session] == first).to_numpy())


def _cluster_moments(x: np.ndarray, groups: np.ndarray):
    """Row counts, item sums and item cross-product sums of each cluster (patient).

    Items are centred at their overall means first, which changes no covariance and keeps
    the sums of squares accurate.
    """
    codes, uniques = pd.factorize(groups)
    m, (n, k) = len(uniques), x.shape
    xc = x - x.mean(axis=0)
    counts = np.bincount(codes, minlength=m).astype(float)
    sums = np.zeros((m, k))
    np.add.at(sums, codes, xc)
    cross = np.zeros((m, k * k))
    np.add.at(cross, codes, (xc[:, :, None] * xc[:, None, :]).reshape(n, k * k))
    return counts, sums, cross


def _fit_one_factor_batch(R: np.ndarray, start: np.ndarray, *, gtol=1e-8, maxiter=200):
    r"""Fit the one-factor ML model of :func:`_fit_one_factor` to a stack of matrices at once.

    Fisher scoring on the same parameters (loadings and log-uniquenesses) and the same
    objective :math:`F = \log|\Sigma| + \mathrm{tr}(R\Sigma^{-1})`, with step halving; a fit
    stops when the largest absolute gradient is below *gtol* (the tolerance BFGS uses in
    :func:`_fit_one_factor`). With :math:`P = \Sigma^{-1}`, :math:`u = P\lambda` and
    :math:`c = \lambda^\top P\lambda`, the expected second derivatives
    :math:`\mathrm{tr}(P\,\partial_a\Sigma\,P\,\partial_b\Sigma)` are
    :math:`2(c P_{ab} + u_a u_b)` for two loadings, :math:`2\psi_b P_{ab} u_b` for a loading
    and a log-uniqueness and :math:`\psi_a\psi_b P_{ab}^2` for two log-uniquenesses.

    Parameters
    ----------
    R : numpy.ndarray
        Correlation matrices, shape ``(B, k, k)``.
    start : numpy.ndarray
        Starting parameters, shape ``(2k,)`` or ``(B, 2k)``.

    Returns
    -------
    theta : numpy.ndarray
        Parameters ``(B, 2k)``.
    converged : numpy.ndarray
        Boolean ``(B,)``: the gradient criterion was met.
    """
    B, k, _ = R.shape
    theta = np.array(np.broadcast_to(start, (B, 2 * k)), dtype=float)
    diag = np.eye(k, dtype=bool)

    def evaluate(th, Rs):
        lam, psi = th[:, :k], np.exp(th[:, k:])
        sigma = lam[:, :, None] * lam[:, None, :]
        sigma[:, diag] += psi
        sign, logdet = np.linalg.slogdet(sigma)
        P = np.linalg.inv(sigma)
        f = np.where(sign > 0, logdet + np.einsum("bij,bij->b", Rs, P), np.inf)
        return lam, psi, P, f

    lam, psi, P, f = evaluate(theta, R)
    converged = np.zeros(B, dtype=bool)
    failed = ~np.isfinite(f)
    for _ in range(maxiter):
        act = np.flatnonzero(~converged & ~failed)
        if not len(act):
            break
        lam_a, psi_a, P_a = lam[act], psi[act], P[act]
        G = P_a - P_a @ R[act] @ P_a
        grad = np.concatenate(
            [2.0 * np.einsum("bij,bj->bi", G, lam_a), psi_a * np.diagonal(G, axis1=1, axis2=2)],
            axis=1,
        )
        now = np.abs(grad).max(axis=1) < gtol
        converged[act[now]] = True
        act, lam_a, psi_a, P_a, grad = (v[~now] for v in (act, lam_a, psi_a, P_a, grad))
        if not len(act):
            break
        u = np.einsum("bij,bj->bi", P_a, lam_a)
        c = np.einsum("bi,bi->b", lam_a, u)
        H = np.empty((len(act), 2 * k, 2 * k))
        H[:, :k, :k] = 2.0 * (P_a * c[:, None, None] + u[:, :, None] * u[:, None, :])
        H[:, :k, k:] = 2.0 * P_a * (u * psi_a)[:, None, :]
        H[:, k:, :k] = np.swapaxes(H[:, :k, k:], 1, 2)
        H[:, k:, k:] = P_a**2 * psi_a[:, :, None] * psi_a[:, None, :]
        try:
            step = np.linalg.solve(H, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:  # a singular information matrix: left to BFGS
            failed[act] = True
            continue
        pending, t = np.arange(len(act)), np.ones(len(act))
        for _ in range(30):  # step halving until F does not increase
            rows = act[pending]
            trial = theta[rows] - t[pending, None] * step[pending]
            lam_t, psi_t, P_t, f_t = evaluate(trial, R[rows])
            ok = f_t <= f[rows] + 1e-12 * np.abs(f[rows])
            done = rows[ok]
            theta[done], lam[done], psi[done], P[done], f[done] = (
                trial[ok],
                lam_t[ok],
                psi_t[ok],
                P_t[ok],
                f_t[ok],
            )
            pending = pending[~ok]
            if not len(pending):
                break
            t[pending] /= 2
        else:
            failed[act[pending]] = True
    return theta, converged


def _bootstrap_omega(
    x: np.ndarray, groups: np.ndarray, n_boot: int, rng, start, level, *, label: str = "omega"
):
    r"""Percentile CI of omega from a bootstrap that resamples patients (clusters).

    Each replicate draws as many patients as there are, with replacement, and takes every
    row of each drawn patient. Its item covariance matrix is computed from per-patient sums
    weighted by how often each patient was drawn (the same matrix as ``np.cov`` of the
    stacked rows), and the one-factor models of all replicates are fitted together
    (:func:`_fit_one_factor_batch`) from the full-sample estimate; a replicate that does not
    converge there is refitted alone with BFGS (:func:`_fit_one_factor`), as every replicate
    was before. Replicates with fewer than 3 rows or an item without variance are skipped.
    The random draws are those of the former one-replicate-at-a-time loop, so a seed gives
    the same resamples.
    """
    counts, sums, cross = _cluster_moments(x, groups)
    m, k = len(counts), x.shape[1]
    t0 = time.process_time()
    weights = np.empty((n_boot, m))
    for b in range(n_boot):
        weights[b] = np.bincount(rng.integers(0, m, size=m), minlength=m)
    n = weights @ counts
    sx = weights @ sums
    with np.errstate(divide="ignore", invalid="ignore"):
        S = (
            (weights @ cross).reshape(n_boot, k, k)
            - sx[:, :, None] * sx[:, None, :] / n[:, None, None]
        ) / (n - 1)[:, None, None]
    var = np.diagonal(S, axis1=1, axis2=2)
    usable = (n >= 3) & np.all(var > 0, axis=1)
    S = S[usable]
    d = np.sqrt(np.diagonal(S, axis1=1, axis2=2))
    theta, converged = _fit_one_factor_batch(S / (d[:, :, None] * d[:, None, :]), start)
    lam, psi = theta[:, :k] * d, np.exp(theta[:, k:]) * d**2
    stats = lam.sum(axis=1) ** 2 / (lam.sum(axis=1) ** 2 + psi.sum(axis=1))
    keep = converged.copy()
    for i in np.flatnonzero(~converged):
        try:
            stats[i] = _omega_from_cov(S[i], start)[0]
            keep[i] = True
        except (np.linalg.LinAlgError, ValueError):
            continue
    stats = stats[keep]
    log.info(
        "%s: %d of %d bootstrap replicates (%d patients, %d rows; %d refitted alone) in %.2f CPU-s",
        label,
        len(stats),
        n_boot,
        m,
        len(x),
        int((~converged).sum()),
        time.process_time() - t0,
    )
    if len(stats) < max(10, n_boot // 2):
        return np.nan, np.nan, len(stats)
    a = (1 - level) / 2
    lo, hi = np.quantile(stats, [a, 1 - a])
    return float(lo), float(hi), len(stats)


def reliability(
    data: pd.DataFrame,
    instruments,
    *,
    patient: str = "patient",
    session: str = "session",
    occasion: Sequence[Occasion] | Occasion = ("first", "pooled"),
    by: Sequence[str] | None = None,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    alpha_missing: AlphaMissing = "listwise",
) -> pd.DataFrame:
    r"""Cronbach's alpha and McDonald's omega, with CIs, per instrument, scale and occasion.

    Parameters
    ----------
    data : pandas.DataFrame
        Canonical session table with item columns (raw, not reverse-keyed).
    instruments : str, list or mapping
        As in :func:`score_sessions`.
    patient, session : str
        Column names of the patient id and the session number.
    occasion : {'first', 'pooled'} or a sequence of them
        ``first``: each patient's first session at which the instrument was administered
        (independent rows); ``pooled``: every administered session.
    by : sequence of str, optional
        Grouping columns (e.g. ``["informant"]``) put first in the output; without it,
        all informants are pooled and the note says so when there are several.
    ci : float, default 0.95
        Confidence level of both intervals.
    n_boot : int, default 1000
        Bootstrap replicates for the omega interval (0 skips it).
    seed : int, default 0
        Seed of the bootstrap generator (``numpy.random.default_rng``).
    alpha_missing : {'listwise', 'pairwise'}, default 'listwise'
        Rows alpha uses (see :func:`cronbach_alpha`): the complete cases, as omega does,
        or psych's pairwise covariances over every row with an answered item of the scale
        (the note then gives that number of rows; ``n`` stays the complete cases).

    Returns
    -------
    pandas.DataFrame
        One row per (``by`` group x) instrument x scale x occasion, with columns
        ``instrument, scale, occasion, n, k, alpha, alpha_ci_low, alpha_ci_high, std_alpha,
        omega, omega_ci_low, omega_ci_high, note``; ``scale`` is ``total`` or a subscale name,
        ``n`` the complete cases used and ``k`` the items.

    Raises
    ------
    KeyError
        A named column is missing from ``data``.
    ValueError
        A bad ``occasion``, ``ci`` or ``n_boot``.

    Notes
    -----
    Items are reverse-keyed first; rows missing any item of the scale are dropped
    (listwise) so alpha and omega use the same cases, unless ``alpha_missing`` is
    ``'pairwise'``. Alpha, its CI (Feldt, Woodruff & Salih, 1987) and standardised alpha
    are :func:`cronbach_alpha`. Omega total is
    :func:`omega_total` (one-factor ML model); its CI is a percentile bootstrap that
    resamples patients, so for pooled sessions it respects their dependence, whereas
    Feldt's alpha interval assumes independent rows and is too narrow there.

    References
    ----------
    Cronbach, L. J. (1951). Coefficient alpha and the internal structure of tests.
    *Psychometrika*, 16, 297-334.
    Feldt, L. S., Woodruff, D. J., & Salih, F. A. (1987). Statistical inference for
    coefficient alpha. *Applied Psychological Measurement*, 11(1), 93-103.
    McDonald, R. P. (1999). *Test theory: A unified treatment*. Erlbaum.
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    if alpha_missing not in ALPHA_MISSING:
        raise ValueError(
            f"`alpha_missing` must be 'listwise' or 'pairwise'; got {alpha_missing!r}."
        )
    occasions = (occasion,) if isinstance(occasion, str) else tuple(occasion)
    for occ in occasions:
        if occ not in _OCCASIONS:
            raise ValueError(f"`occasion` must be 'first' or 'pooled' (or both); got {occ!r}.")
    if not 0 < ci < 1:
        raise ValueError(f"`ci` must lie between 0 and 1; got {ci!r}.")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"`n_boot` must be a non-negative integer; got {n_boot!r}.")
    by = list(by) if by else []
    _check_columns(data, [patient, session, *by], "reliability")
    insts = _resolve(instruments)
    rng = np.random.default_rng(seed)
    groups = [((), data)] if not by else list(data.groupby(by, observed=True, sort=True))
    several_informants = (
        not by and "informant" in data.columns and data["informant"].nunique(dropna=True) > 1
    )
    rows = []
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        for inst in insts:
            x_all = _item_matrix(frame, inst)
            administered = (~np.isnan(x_all)).any(axis=1)
            frame_adm = frame.loc[administered]
            x_adm = x_all[administered]
            for occ in occasions:
                pos = _occasion_positions(frame_adm, occ, patient, session)
                x_occ = x_adm[pos]
                pat = frame_adm[patient].to_numpy()[pos]
                for scale in ["total", *inst.subscales]:
                    idx = [i - 1 for i in inst.scale_items(scale)]
                    xs_any = x_occ[:, idx]
                    answered = ~np.isnan(xs_any).all(axis=1)
                    xs_any = xs_any[answered]
                    complete = ~np.isnan(xs_any).any(axis=1)
                    xs, ps = xs_any[complete], pat[answered][complete]
                    notes = []
                    if occ == "first":
                        if len(ps) and pd.Series(ps).duplicated().any():
                            notes.append("several rows per patient at the first session")
                        else:
                            notes.append("one row per patient (first administered session)")
                    else:
                        notes.append(
                            "pooled over sessions: rows within a patient are not independent; "
                            "the alpha CI (Feldt) assumes independence and is too narrow, the "
                            "omega CI resamples patients"
                        )
                    if several_informants:
                        notes.append("informants pooled (pass by=['informant'] to separate)")
                    row = dict(zip(by, key, strict=True))
                    label = " ".join(["omega", *map(str, key), inst.id, scale, f"({occ})"])
                    row.update(
                        instrument=inst.id, scale=scale, occasion=occ, n=int(len(xs)), k=len(idx)
                    )
                    row.update({c: np.nan for c in RELIABILITY_COLUMNS[5:12]})
                    x_alpha = xs if alpha_missing == "listwise" else xs_any
                    if len(idx) < 2 or len(x_alpha) < 3:
                        notes.append("too few items or complete cases to estimate")
                    elif np.any(np.nanvar(x_alpha, axis=0, ddof=1) == 0):
                        notes.append("an item has zero variance; not estimated")
                    else:
                        wide = pd.DataFrame(x_alpha, columns=[f"i{j}" for j in idx])
                        res = cronbach_alpha(wide, missing=alpha_missing, ci=ci)
                        row.update({c: res[c] for c in RELIABILITY_COLUMNS[5:9]})
                        if alpha_missing == "pairwise":
                            notes.append(f"alpha from pairwise item covariances of {res['n']} rows")
                        if len(xs) < 3:
                            notes.append("omega not estimated: fewer than 3 complete cases")
                        else:
                            try:
                                om, theta = _omega_from_cov(np.cov(xs, rowvar=False))
                                row["omega"] = float(om)
                                if n_boot > 0:
                                    lo, hi, used = _bootstrap_omega(
                                        xs, ps, n_boot, rng, theta, ci, label=label
                                    )
                                    row.update(omega_ci_low=lo, omega_ci_high=hi)
                                    if used < n_boot:
                                        notes.append(
                                            f"omega CI from {used} of {n_boot} bootstrap replicates"
                                        )
                            except (np.linalg.LinAlgError, ValueError) as err:
                                notes.append(f"omega not estimated: {err}")
                    row["note"] = "; ".join(notes)
                    rows.append(row)
    return pd.DataFrame(rows, columns=[*by, *RELIABILITY_COLUMNS])
