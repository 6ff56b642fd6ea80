"""Tables for people (Markdown) and machines (CSV) from model results.

Numbers are formatted APA style: estimates and intervals to two decimals, p to three
decimals with "< .001" below that, no leading zero for p.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["fixed_effects_table", "format_p", "to_markdown", "model_markdown", "reliability_markdown"]

_FIXED_COLUMNS = ["term", "estimate", "se", "ci_low", "ci_high", "statistic", "p"]


def format_p(p: float | None) -> str:
    """APA p value: ``"< .001"``, else three decimals without the leading zero.

    >>> format_p(0.0004), format_p(0.0456), format_p(1.0)
    ('< .001', '.046', '1.000')
    """
    if p is None or pd.isna(p):
        return ""
    if p < 0.001:
        return "< .001"
    return f"{p:.3f}".replace("0.", ".", 1)


def fixed_effects_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per fixed effect of a fitted model (see :func:`allianceflow.models.fit_model`).

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``term``, ``estimate``, ``se``, ``ci_low``, ``ci_high``,
        ``statistic``, ``p``, ``converged``, ``optimizer``: the unrounded numbers, with the
        model's convergence status on every row so it travels with the estimates.
    """
    fixed = pd.DataFrame(result["fixed"])
    missing = [c for c in _FIXED_COLUMNS if c not in fixed.columns]
    if missing:
        raise KeyError(f"`result['fixed']` lacks columns {missing}; it has {list(fixed.columns)}.")
    table = fixed[_FIXED_COLUMNS].copy()
    table.insert(0, "model", result["name"])
    table["converged"] = bool(result["convergence"]["converged"])
    table["optimizer"] = result["convergence"]["optimizer"]
    return table


def to_markdown(table: pd.DataFrame, *, title: str | None = None, note: str | None = None) -> str:
    """Render a fixed-effects table as Markdown with APA-style numbers."""
    shown = pd.DataFrame(
        {
            "Term": table["term"],
            "b": table["estimate"].map("{:.2f}".format),
            "SE": table["se"].map("{:.2f}".format),
            "95% CI": [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])],
            "z": table["statistic"].map("{:.2f}".format),
            "p": table["p"].map(format_p),
        }
    )
    parts = []
    if title:
        parts.append(f"**{title}**\n")
    parts.append(shown.to_markdown(index=False, disable_numparse=True))
    if note:
        parts.append(f"\n*Note.* {note}")
    return "\n".join(parts) + "\n"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def model_markdown(result: dict[str, Any]) -> str:
    """A model's fixed effects, variance components, ICC, R², fit and convergence as Markdown.

    Convergence, the optimiser and any boundary (singular) fit are printed under the table,
    never only in a log.
    """
    conv = result["convergence"]
    fixed = to_markdown(fixed_effects_table(result), title=f"Model {result['name']}: {result['formula']}")
    random = pd.DataFrame(result["random"])
    lines = [fixed, "", "Variance components", ""]
    if not random.empty:
        shown = pd.DataFrame({
            "Group": random["group"],
            "Term": random["term"],
            "Variance": random["variance"].map(lambda v: _num(v, 3)),
            "SD": random["sd"].map(lambda v: _num(v, 3)),
        })
        lines.append(shown.to_markdown(index=False, disable_numparse=True))
    lines.append(f"\nResidual variance {_num(result['residual_variance'], 3)}.")
    icc = ", ".join(f"{k} {_num(v, 3)}" for k, v in sorted(result.get("icc", {}).items()))
    lines.append(
        f"ICC: {icc}. Marginal R² {_num(result.get('r2_marginal'), 3)}, conditional R² "
        f"{_num(result.get('r2_conditional'), 3)}."
    )
    groups = ", ".join(f"{v} {k}s" for k, v in sorted(result["n_groups"].items()))
    lines.append(
        f"{result['n_obs']} observations ({groups}); {result.get('n_dropped_missing', 0)} rows "
        f"dropped for missing values. {'REML' if result['reml'] else 'ML'}: logLik "
        f"{_num(result['loglik'])}, AIC {_num(result['aic'])}, BIC {_num(result['bic'])}."
    )
    status = "converged" if conv["converged"] else "DID NOT CONVERGE"
    boundary = ", ".join(conv.get("boundary", [])) or "none"
    warnings = "; ".join(conv.get("warnings", [])) or "none"
    lines.append(
        f"Fit {status} with optimiser {conv['optimizer']}; max |gradient| "
        f"{conv.get('max_abs_gradient', float('nan')):.2g}; variances at the boundary: {boundary}; "
        f"warnings: {warnings}."
    )
    return "\n".join(lines) + "\n"


def reliability_markdown(table: pd.DataFrame) -> str:
    """Reliability (alpha and omega with 95% CIs) per instrument, scale and occasion."""
    def ci(lo, hi):
        return "" if pd.isna(lo) else f"[{lo:.2f}, {hi:.2f}]"

    shown = pd.DataFrame({
        "Instrument": table["instrument"],
        "Scale": table["scale"],
        "Occasion": table["occasion"],
        "n": table["n"].astype(int).astype(str),
        "Items": table["k"].astype(int).astype(str),
        "α": table["alpha"].map(_num),
        "α 95% CI": [ci(a, b) for a, b in zip(table["alpha_ci_low"], table["alpha_ci_high"])],
        "ω": table["omega"].map(_num),
        "ω 95% CI": [ci(a, b) for a, b in zip(table["omega_ci_low"], table["omega_ci_high"])],
    })
    notes = sorted({n for n in table.get("note", pd.Series(dtype=str)).dropna() if n})
    text = "**Reliability**\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n"
    if notes:
        text += "\n*Note.* " + " ".join(notes) + "\n"
    return text
