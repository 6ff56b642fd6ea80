r"""The result of a model fit: :class:`MixedModelResult`, built in one place for both back-ends.

A back-end (the fast engine or statsmodels' ``MixedLM``) returns a :class:`BackendFit`:
unrounded estimates, covariances, variance components, the level variances behind ICC and
R², the conditional modes and its convergence record. :func:`build_result` turns it into
the JSON record -- fixed-effect rows with Wald tests, df and r-equivalents, ICC, R², AIC,
BIC, all rounded to 12 significant digits -- and wraps it in a :class:`MixedModelResult`,
whose ``to_dict()`` is what the pipeline writes to ``results/<study>/models/<model>.json``.
"""

from __future__ import annotations

import copy
import html
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from allianceflow.models.distributions import norm_ppf
from allianceflow.models.inference import (
    is_boundary,
    round_sig,
    variance_explained,
    wald_rows,
)

__all__ = [
    "BackendFit",
    "MixedModelResult",
    "GLMMResult",
    "build_result",
    "variance_record",
    "format_model",
    "ddf_method",
    "ddf_note",
    "FIXED_COLUMNS",
    "RANDOM_COLUMNS",
]

_r = round_sig

#: Columns of :attr:`MixedModelResult.fixed`.
FIXED_COLUMNS = ["term", "estimate", "se", "ci_low", "ci_high", "statistic", "p", "df", "r"]
#: Columns of :attr:`MixedModelResult.random`.
RANDOM_COLUMNS = ["group", "term", "variance", "sd", "boundary"]
_COVARIANCE_COLUMNS = ["group", "term1", "term2", "covariance", "correlation"]
_MODE_COLUMNS = ["group", "level", "term", "estimate", "se", "ci_low", "ci_high"]
_KEYS = (
    "name",
    "formula",
    "reml",
    "engine",
    "n_obs",
    "n_groups",
    "n_dropped_missing",
    "fixed",
    "random",
    "covariances",
    "residual_variance",
    "icc",
    "r2_marginal",
    "r2_conditional",
    "loglik",
    "n_params",
    "conditional_modes",
    "vcov_fixed",
    "aic",
    "bic",
    "convergence",
)


#: Per df method: how the fixed effects were tested, for notes and footers.
_DDF_NOTES = {
    "containment": (
        "df: containment (Pinheiro & Bates 2000); Wald z tests, p and 95% CI from the normal "
        "distribution"
    ),
    "satterthwaite": (
        "df: Satterthwaite (lmerTest); t tests, p and 95% CI from the t distribution on those df"
    ),
    "kenward-roger": (
        "df: Kenward–Roger (pbkrtest); adjusted SE, t tests, p and 95% CI from the t "
        "distribution on those df"
    ),
}


def ddf_method(record: dict) -> str:
    """Name the df method of a model record: its ``ddf`` key, "containment" when absent."""
    return record.get("ddf", "containment")


def ddf_note(record: dict) -> str:
    """Say which df and reference distribution a model record's tests use (one clause).

    E.g. "df: Satterthwaite (lmerTest); t tests, p and 95% CI from the t distribution on
    those df".
    """
    method = ddf_method(record)
    if method not in _DDF_NOTES:
        raise ValueError(
            f"`record['ddf']` must be 'containment', 'satterthwaite' or 'kenward-roger'; "
            f"got {method!r}."
        )
    return _DDF_NOTES[method]


@dataclass
class BackendFit:
    r"""What a back-end hands over: the fit's numbers, unrounded, in report order.

    Attributes
    ----------
    engine : str
        ``"allianceflow.engine"`` or ``"statsmodels.MixedLM"``.
    n_obs : int
    n_groups : dict
        Units per grouping factor label, in formula order.
    fixed_names : list of str
    beta, cov_fe : ndarray
        Fixed effects and their covariance :math:`\hat\sigma^2 (X^\top V^{-1} X)^{-1}`.
    df : dict
        Containment df per fixed term; ``df_default`` for a term without one.
    df_default : float
    sigma2 : float
        Residual variance.
    random : list of (group, term, variance)
    covariances : list of (group, term1, term2, covariance, sqrt(var1 * var2))
    level_variance : dict
        Per level label, the variance behind its ICC, in the order to sum them.
    group_order : list of str
        Level labels in formula order.
    var_fixed : float
        :math:`\operatorname{var}(X\hat\beta)`.
    loglik : float
    n_params : int
    conditional_modes : list of (group, level, term, mode, conditional SD)
    converged, optimizer, attempts, max_abs_gradient, hessian_positive_definite, boundary, warnings
        The convergence record (``attempts`` already in their JSON form).
    """

    engine: str
    n_obs: int
    n_groups: dict
    fixed_names: list
    beta: np.ndarray
    cov_fe: np.ndarray
    df: dict
    df_default: float
    sigma2: float
    random: list
    covariances: list
    level_variance: dict
    group_order: list
    var_fixed: float
    loglik: float
    n_params: int
    conditional_modes: list
    converged: bool
    optimizer: str
    attempts: list
    max_abs_gradient: float
    hessian_positive_definite: bool
    boundary: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def variance_record(fit: BackendFit) -> dict:
    """The variance part of the record :func:`build_result` makes, without building it.

    ``reml`` (True: only REML fits reach the df methods), ``random``, ``covariances`` and
    ``residual_variance``, rounded as in the record: what
    :func:`allianceflow.models.ddf.variance_structure` reads.
    """
    return {
        "reml": True,
        "random": [{"group": g, "term": t, "variance": _r(v)} for g, t, v in fit.random],
        "covariances": [
            {"group": g, "term1": t1, "term2": t2, "covariance": _r(c)}
            for g, t1, t2, c, _ in fit.covariances
        ],
        "residual_variance": _r(fit.sigma2),
    }


def build_result(
    fit: BackendFit,
    *,
    name: str,
    formula: str,
    reml: bool,
    n_dropped: int,
    dropped_by_variable: dict[str, int],
    dropped_terms: list[dict],
    boundary_tol: float,
    ddf: str = "containment",
    ddf_table: pd.DataFrame | None = None,
    extra: dict | None = None,
) -> MixedModelResult:
    """Turn a :class:`BackendFit` into a :class:`MixedModelResult` (the one place that does).

    ``dropped_terms`` lists the random terms left out before fitting because their grouping
    factor had too few levels (see :func:`allianceflow.models.fit_model`); their warnings
    join the convergence warnings.

    With ``ddf`` "containment" (``ddf_table`` None) the fixed-effect rows are Wald z rows
    with the back-end's containment df and the record has no ``ddf`` key (the record of
    earlier versions, byte for byte). With "satterthwaite" or "kenward-roger",
    ``ddf_table`` (``term, se, df``, from :mod:`allianceflow.models.ddf`) supplies each
    row's df and standard error, the rows use the *t* distribution on those df
    (:func:`~allianceflow.models.inference.wald_rows`), and ``ddf`` is recorded last.

    ``extra`` (a GLMM's keys: ``family``, ``link``, ``nAGQ``, ratios, ...) is appended to
    the record, and the result is then a :class:`GLMMResult`.
    """
    if (ddf == "containment") != (ddf_table is None):
        raise ValueError(
            f"`ddf_table` must be given exactly when `ddf` is not 'containment'; got ddf={ddf!r} "
            f"and ddf_table {'None' if ddf_table is None else 'given'}."
        )
    ses = np.sqrt(np.diag(fit.cov_fe))
    dfs = dict(fit.df)
    if ddf_table is not None:
        by_term = ddf_table.set_index("term")
        ses = np.array(
            [float(by_term.loc[t, "se"]) for t in fit.fixed_names]
            if ddf == "kenward-roger"
            else ses
        )
        dfs = {t: float(by_term.loc[t, "df"]) for t in fit.fixed_names}
    zcrit = norm_ppf(0.975)
    scale = float(fit.sigma2)
    icc, r2_m, r2_c = variance_explained(
        fit.var_fixed, fit.level_variance, scale, list(dict.fromkeys(fit.group_order))
    )
    llf = float(fit.loglik)
    k, n = int(fit.n_params), int(fit.n_obs)
    warnings_ = list(fit.warnings) + [d["warning"] for d in dropped_terms]
    record = {
        "name": name,
        "formula": formula,
        "reml": bool(reml),
        "engine": fit.engine,
        "n_obs": n,
        "n_groups": {g: int(v) for g, v in fit.n_groups.items()},
        "n_dropped_missing": int(n_dropped),
        "fixed": wald_rows(
            list(fit.fixed_names),
            fit.beta,
            ses,
            dfs,
            float(fit.df_default),
            distribution="normal" if ddf_table is None else "t",
        ),
        "random": [
            {
                "group": g,
                "term": t,
                "variance": _r(v),
                "sd": _r(math.sqrt(max(v, 0.0))),
                # a GLMM has no residual SD: its SDs are on the linear predictor's scale
                # (θ itself, as lme4's isSingular for glmer)
                "boundary": is_boundary(v, 1.0 if extra else scale, boundary_tol),
            }
            for g, t, v in fit.random
        ],
        "covariances": [
            {
                "group": g,
                "term1": t1,
                "term2": t2,
                "covariance": _r(c),
                "correlation": _r(c / den) if den > 0 else None,
            }
            for g, t1, t2, c, den in fit.covariances
        ],
        "residual_variance": _r(scale),
        "icc": {g: _r(v) for g, v in icc.items()},
        "r2_marginal": _r(r2_m),
        "r2_conditional": _r(r2_c),
        "loglik": _r(llf),
        "n_params": k,
        "conditional_modes": [
            {
                "group": g,
                "level": level,
                "term": t,
                "estimate": _r(est),
                "se": _r(se),
                "ci_low": _r(est - zcrit * se),
                "ci_high": _r(est + zcrit * se),
            }
            for g, level, t, est, se in fit.conditional_modes
        ],
        "vcov_fixed": {
            "terms": list(fit.fixed_names),
            "matrix": [[_r(v) for v in row] for row in fit.cov_fe],
        },
        "aic": _r(-2 * llf + 2 * k),
        "bic": _r(-2 * llf + k * math.log(n)),
        "convergence": {
            "converged": bool(fit.converged),
            "optimizer": fit.optimizer,
            "attempts": fit.attempts,
            "max_abs_gradient": _r(fit.max_abs_gradient),
            "hessian_positive_definite": bool(fit.hessian_positive_definite),
            "boundary": list(fit.boundary),
            "warnings": sorted(dict.fromkeys(warnings_), key=warnings_.index),
        },
        "dropped_missing_by_variable": dict(dropped_by_variable),
        "dropped_random_terms": [
            {key: d[key] for key in ("group", "terms", "n_levels", "min_levels")}
            for d in dropped_terms
        ],
    }
    if ddf_table is not None:
        record["ddf"] = ddf
    if extra:
        record.update(extra)
        return GLMMResult(record)
    return MixedModelResult(record)


class MixedModelResult:
    """A fitted linear mixed model: tidy tables, text, and the JSON record.

    Returned by :func:`allianceflow.models.fit_model`; :meth:`from_dict` rebuilds one from
    a model's JSON file. The record is kept as the pipeline writes it, so ``to_dict()`` of a
    result read back is the file's content.

    Attributes
    ----------
    fixed : pandas.DataFrame
        One row per fixed effect, columns ``term, estimate, se, ci_low, ci_high,
        statistic, p, df, r`` (``statistic`` is Wald z with containment df, t with
        Satterthwaite or Kenward–Roger df; ``r`` the r-equivalent).
    random : pandas.DataFrame
        One row per random effect, columns ``group, term, variance, sd, boundary``; the
        residual last (group ``"Residual"``, empty term).
    covariances : pandas.DataFrame
        ``group, term1, term2, covariance, correlation`` of correlated random effects.
    conditional_modes : pandas.DataFrame
        ``group, level, term, estimate, se, ci_low, ci_high`` of the outer factor's effects.
    icc : dict
        Intraclass correlation per grouping factor.
    r2 : dict
        ``{"marginal": ..., "conditional": ...}`` (Nakagawa & Schielzeth 2013).
    convergence : dict
        ``converged, optimizer, attempts, max_abs_gradient, hessian_positive_definite,
        boundary, warnings``.
    warnings : list of str
        The convergence record's warnings (singular fits, dropped random terms, ...).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from allianceflow.models import fit_model
    >>> d = pd.DataFrame({"g": np.repeat(list("abcdef"), 4), "x": np.tile([0.0, 1, 2, 3], 6)})
    >>> d["y"] = (d["x"] + np.repeat([0.0, 1, -1, 0.5, 2, -2], 4)
    ...           + np.tile([0.1, -0.1, 0.2, -0.2], 6) * np.repeat([1, 2, 1, 3, 1, 2], 4))
    >>> res = fit_model(d, "y ~ x + (1 | g)", name="example")
    >>> res
    <MixedModelResult 'example': y ~ x + (1 | g) (converged)>
    >>> list(res.fixed.columns)
    ['term', 'estimate', 'se', 'ci_low', 'ci_high', 'statistic', 'p', 'df', 'r']
    >>> MixedModelResult.from_dict(res.to_dict()).to_dict() == res.to_dict()
    True
    """

    def __init__(self, record: dict) -> None:
        self._record = record

    # ----------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, record: dict) -> MixedModelResult:
        """Rebuild a result from its ``to_dict()`` (e.g. a model's JSON file).

        Raises
        ------
        TypeError
            ``record`` is not a dict.
        KeyError
            A key of the model JSON is missing; the message lists them.
        """
        if isinstance(record, MixedModelResult):
            return record
        if cls is MixedModelResult and isinstance(record, dict) and "family" in record:
            return GLMMResult.from_dict(record)
        if not isinstance(record, dict):
            raise TypeError(
                f"`record` must be a dict from MixedModelResult.to_dict(); got "
                f"{type(record).__name__}."
            )
        missing = [k for k in _KEYS if k not in record]
        if missing:
            raise KeyError(
                f"`record` is not a model result: it lacks the keys {missing} (a model JSON "
                f"written by fit_model has {list(_KEYS)})."
            )
        return cls(copy.deepcopy(record))

    def to_dict(self) -> dict:
        """Return the JSON-ready record: plain types, floats rounded to 12 significant digits."""
        return copy.deepcopy(self._record)

    # ----------------------------------------------------------------- tidy views
    @property
    def name(self) -> str:
        """The model's name."""
        return self._record["name"]

    @property
    def formula(self) -> str:
        """The lme4 formula as given."""
        return self._record["formula"]

    @property
    def fixed(self) -> pd.DataFrame:
        """Fixed effects, one row per term (columns :data:`FIXED_COLUMNS`)."""
        return pd.DataFrame(self._record["fixed"], columns=FIXED_COLUMNS)

    @property
    def random(self) -> pd.DataFrame:
        """Variance components, residual last (columns :data:`RANDOM_COLUMNS`)."""
        rows = [dict(r) for r in self._record["random"]]
        residual = self._record["residual_variance"]
        rows.append(
            {
                "group": "Residual",
                "term": "",
                "variance": residual,
                "sd": _r(math.sqrt(residual)) if residual is not None else None,
                "boundary": False,
            }
        )
        return pd.DataFrame(rows, columns=RANDOM_COLUMNS)

    @property
    def covariances(self) -> pd.DataFrame:
        """Covariances and correlations of correlated random effects."""
        return pd.DataFrame(self._record["covariances"], columns=_COVARIANCE_COLUMNS)

    @property
    def conditional_modes(self) -> pd.DataFrame:
        """Conditional modes of the outer factor's effects, with 95% intervals."""
        return pd.DataFrame(self._record["conditional_modes"], columns=_MODE_COLUMNS)

    @property
    def icc(self) -> dict:
        """Intraclass correlation per grouping factor."""
        return dict(self._record["icc"])

    @property
    def r2(self) -> dict:
        """Marginal and conditional R² (Nakagawa & Schielzeth 2013)."""
        return {
            "marginal": self._record["r2_marginal"],
            "conditional": self._record["r2_conditional"],
        }

    @property
    def convergence(self) -> dict:
        """The convergence record (verdict, optimiser, attempts, boundary, warnings)."""
        return copy.deepcopy(self._record["convergence"])

    @property
    def converged(self) -> bool:
        """Whether the fit passed the convergence check."""
        return bool(self._record["convergence"]["converged"])

    @property
    def warnings(self) -> list[str]:
        """The fit's warnings (singular fits, dropped random terms, convergence)."""
        return list(self._record["convergence"]["warnings"])

    @property
    def loglik(self) -> float | None:
        """The (RE)ML log-likelihood."""
        return self._record["loglik"]

    # ----------------------------------------------------------------- text and notebooks
    def summary(self) -> str:
        """Render the fit as plain text (see :func:`format_model`)."""
        return format_model(self)

    def __repr__(self) -> str:
        """Name, formula and convergence verdict on one line."""
        status = "converged" if self.converged else "NOT converged"
        return f"<MixedModelResult {self.name!r}: {self.formula} ({status})>"

    def _display_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        fixed = pd.DataFrame(
            [
                {
                    "term": f["term"],
                    "estimate": _fmt(f["estimate"]),
                    "SE": _fmt(f["se"]),
                    "95% CI": f"[{_fmt(f['ci_low'])}, {_fmt(f['ci_high'])}]",
                    _statistic(self._record): _fmt(f["statistic"], 2),
                    "p": _p(f["p"]),
                    "df": _fmt_df(f["df"]),
                    "r": _fmt(f["r"], 3),
                }
                for f in self._record["fixed"]
            ]
        )
        random = self.random.assign(
            variance=lambda t: t["variance"].map(_fmt),
            sd=lambda t: t["sd"].map(_fmt),
            boundary=lambda t: t["boundary"].map(lambda b: "yes" if b else ""),
        )
        return fixed, random

    def _footer(self) -> list[str]:
        icc = ", ".join(f"{g} {_fmt(v, 3)}" for g, v in self.icc.items())
        c = self._record["convergence"]
        lines = [
            f"ICC: {icc}; R² marginal {_fmt(self.r2['marginal'], 3)}, "
            f"conditional {_fmt(self.r2['conditional'], 3)}",
            f"{'Converged' if c['converged'] else 'NOT CONVERGED'} ({c['optimizer']}); "
            f"{self._record['n_obs']} observations, {self._record['n_dropped_missing']} "
            "dropped for missing values",
            ddf_note(self._record),
        ]
        return lines + [f"Warning: {w}" for w in c["warnings"]]

    def _repr_markdown_(self) -> str:
        fixed, random = self._display_frames()

        def md(frame: pd.DataFrame) -> list[str]:
            out = ["| " + " | ".join(frame.columns) + " |"]
            out.append("|" + "---|" * len(frame.columns))
            out += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.to_numpy()]
            return out

        lines = [f"**{self.name}**: `{self.formula}`", "", *md(fixed), "", *md(random), ""]
        return "\n".join(lines + [line + "  " for line in self._footer()]) + "\n"

    def _repr_html_(self) -> str:
        fixed, random = self._display_frames()
        parts = [
            f"<p><b>{html.escape(self.name)}</b>: <code>{html.escape(self.formula)}</code></p>",
            fixed.to_html(index=False),
            random.to_html(index=False),
        ]
        parts += [f"<p>{html.escape(line)}</p>" for line in self._footer()]
        return "\n".join(parts)


class GLMMResult(MixedModelResult):
    """A fitted generalised linear mixed model (binomial or Poisson), as lme4's ``glmer``.

    The record has the linear model's keys (``reml`` False; ``residual_variance`` the
    latent-scale residual variance behind ``icc`` and R², see
    :func:`allianceflow.models.glmm.latent_residual_variance`) plus ``family``, ``link``,
    ``nAGQ``, ``vcov_method``, ``se_beta_only``, ``ratio_type`` ("odds ratio", "rate
    ratio", or None for probit), ``ratios`` (``term, ratio, ci_low, ci_high``: exp of the
    estimate and of its Wald 95% CI), ``latent_residual_variance`` and ``icc_scale``.
    """

    @property
    def family(self) -> str:
        """The family: "binomial" or "poisson"."""
        return self._record["family"]

    @property
    def link(self) -> str:
        """The link: "logit", "probit" or "log"."""
        return self._record["link"]

    @property
    def ratios(self) -> pd.DataFrame:
        """Odds ratios (logit) or rate ratios (log) with 95% CIs; empty for probit."""
        return pd.DataFrame(self._record["ratios"], columns=["term", "ratio", "ci_low", "ci_high"])

    def __repr__(self) -> str:
        """Name, family, formula and convergence verdict on one line."""
        status = "converged" if self.converged else "NOT converged"
        return f"<GLMMResult {self.name!r} ({self.family}, {self.link}): {self.formula} ({status})>"


# --------------------------------------------------------------------------- plain text


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "NA"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if x != 0 and (abs(x) < 10 ** -(nd - 1) or abs(x) >= 1e6):
        return f"{x:.{nd - 1}e}"
    return f"{x:.{nd}f}"


def _fmt_df(df: Any) -> str:
    """Degrees of freedom: a whole number as such, otherwise one decimal (9.5, 12.3)."""
    if df is None:
        return "NA"
    df = float(df)
    if not math.isfinite(df):
        return "NA"
    return f"{df:.0f}" if df == round(df) else f"{df:.1f}"


def _statistic(record: dict) -> str:
    """The test statistic's letter: z for containment df, t otherwise."""
    return "z" if ddf_method(record) == "containment" else "t"


def _p(p: Any) -> str:
    if p is None:
        return "NA"
    return "<.0001" if p < 1e-4 else f"{p:.4f}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(r)
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def format_model(result: MixedModelResult | dict) -> str:
    """Render a model result as plain text (deterministic; no dates or timings).

    Parameters
    ----------
    result : MixedModelResult or dict
        A result of :func:`allianceflow.models.fit_model` or its ``to_dict()`` (a model's
        JSON file read back).

    Returns
    -------
    str
        Model, formula, observations and groups (with rows dropped for missing values, by
        variable), fit statistics, the fixed effects (z or t, 95% CI, df, r-equivalent),
        the variance components, ICC and R², and convergence with every attempt and warning:
        convergence and warnings appear in the text, not only in a log.
    """
    if isinstance(result, MixedModelResult):
        result = result._record
    elif not isinstance(result, dict) or "loglik" not in result:
        raise TypeError(
            "`result` must be a MixedModelResult from fit_model or its to_dict(); got "
            f"{type(result).__name__}."
        )
    lines = []
    method = "REML" if result["reml"] else "ML"
    if "family" in result:
        method = (
            "Laplace" if result["nAGQ"] == 1 else f"adaptive Gauss-Hermite, nAGQ={result['nAGQ']}"
        )
        lines.append(
            f"Generalised linear mixed model '{result['name']}' ({result['family']}, "
            f"{result['link']} link) fit by ML ({method}; {result['engine']})"
        )
    else:
        lines.append(
            f"Linear mixed model '{result['name']}' fit by {method} "
            f"({result.get('engine', 'statsmodels.MixedLM')})"
        )
    lines.append(f"Formula: {result['formula']}")
    groups = ", ".join(f"{g}: {n}" for g, n in result["n_groups"].items())
    lines.append(
        f"Observations: {result['n_obs']}  Groups: {groups}  "
        f"Dropped (missing): {result['n_dropped_missing']}"
    )
    missing = {v: n for v, n in result.get("dropped_missing_by_variable", {}).items() if n}
    if missing:
        lines.append(
            "Missing values by variable (rows): "
            + ", ".join(f"{v} {n}" for v, n in missing.items())
        )
    lines.append(
        f"logLik: {_fmt(result['loglik'])}  AIC: {_fmt(result['aic'], 2)}  "
        f"BIC: {_fmt(result['bic'], 2)}  parameters: {result['n_params']}"
    )
    lines.append("")
    stat = _statistic(result)
    lines.append(f"Fixed effects (Wald {stat}, 95% CI; r = {stat} / sqrt({stat}^2 + df)):")
    rows = [["term", "estimate", "SE", "CI low", "CI high", stat, "p", "df", "r"]]
    for f in result["fixed"]:
        rows.append(
            [
                f["term"],
                _fmt(f["estimate"]),
                _fmt(f["se"]),
                _fmt(f["ci_low"]),
                _fmt(f["ci_high"]),
                _fmt(f["statistic"], 2),
                _p(f["p"]),
                _fmt_df(f["df"]),
                _fmt(f["r"], 3),
            ]
        )
    lines.extend(_table(rows))
    lines.append(ddf_note(result) + ".")
    if result.get("ratios"):
        lines.append("")
        lines.append(f"{result['ratio_type'].capitalize()}s (exp of estimate and 95% CI):")
        rows = [["term", "ratio", "CI low", "CI high"]]
        rows += [
            [f["term"], _fmt(f["ratio"]), _fmt(f["ci_low"]), _fmt(f["ci_high"])]
            for f in result["ratios"]
        ]
        lines.extend(_table(rows))
    lines.append("")
    lines.append("Random effects:")
    rows = [["group", "term", "variance", "SD", "boundary"]]
    for r in result["random"]:
        rows.append(
            [
                r["group"],
                r["term"],
                _fmt(r["variance"]),
                _fmt(r["sd"]),
                "yes" if r["boundary"] else "",
            ]
        )
    residual = result["residual_variance"]
    rows.append(
        [
            "Residual",
            "",
            _fmt(residual),
            _fmt(math.sqrt(residual)) if residual is not None else "NA",
            "",
        ]
    )
    lines.extend(_table(rows))
    for c in result.get("covariances", []):
        lines.append(
            f"  cov({c['term1']}, {c['term2']} | {c['group']}) = {_fmt(c['covariance'])}, "
            f"corr = {_fmt(c['correlation'], 3)}"
        )
    lines.append("")
    icc = ", ".join(f"{g} {_fmt(v, 3)}" for g, v in result["icc"].items())
    lines.append(f"ICC: {icc}")
    if "family" in result:
        lines.append(
            "Residual: the latent-scale variance behind ICC and R2 "
            + {
                "logit": "(pi^2/3, logistic)",
                "probit": "(1, standard normal)",
                "log": "(log-normal approximation, Nakagawa, Johnson & Schielzeth 2017)",
            }[result["link"]]
        )
    lines.append(
        f"R2 marginal: {_fmt(result['r2_marginal'], 3)}  R2 conditional: "
        f"{_fmt(result['r2_conditional'], 3)}  (Nakagawa & Schielzeth 2013)"
    )
    lines.append("")
    c = result["convergence"]
    lines.append(
        f"Convergence: {'converged' if c['converged'] else 'NOT CONVERGED'} "
        f"(optimizer {c['optimizer']}, max |gradient| {_fmt(c['max_abs_gradient'], 3)}, "
        f"Hessian positive definite: {_fmt(c['hessian_positive_definite'])})"
    )
    att = "; ".join(
        f"{a['optimizer']}: logLik {_fmt(a.get('loglik'))}, "
        f"{'ok' if a['converged'] else 'failed check'}"
        for a in c["attempts"]
    )
    lines.append(f"Attempts: {att}")
    if c["boundary"]:
        lines.append("Boundary (singular) variances: " + ", ".join(c["boundary"]))
    for w in c["warnings"]:
        lines.append(f"Warning: {w}")
    return "\n".join(lines) + "\n"
