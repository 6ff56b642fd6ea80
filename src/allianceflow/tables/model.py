"""Tables of fitted multilevel models: fixed effects, variance components, fit.

Each function reads the model result dict of :func:`allianceflow.models.fit_model` (the
JSON the fit stage writes) and returns either a tidy DataFrame of the unrounded numbers, a
Markdown text for people, or a :class:`~allianceflow.tables.table.Table` to render in every
format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..labels import Labels, lower_first, title_case
from .formatting import _label, format_number, format_p, format_r
from .table import Table

__all__ = ["fixed_effects_table", "to_markdown", "model_markdown", "model_table"]

_FIXED_COLUMNS = ["term", "estimate", "se", "ci_low", "ci_high", "statistic", "p"]


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


def to_markdown(
    table: pd.DataFrame,
    *,
    title: str | None = None,
    note: str | None = None,
    statistic: str = "z",
) -> str:
    """Render a fixed-effects table (:func:`fixed_effects_table`) as Markdown, APA numbers.

    Estimates, SEs, intervals and the statistic (headed *statistic*: "z" for Wald z with
    containment df, "t" with Satterthwaite or Kenward–Roger df) to two decimals with a true
    minus sign, *p* by :func:`~allianceflow.tables.formatting.format_p`.
    """
    shown = pd.DataFrame(
        {
            "Term": table["term"],
            "b": table["estimate"].map(format_number),
            "SE": table["se"].map(format_number),
            "95% CI": [
                f"[{format_number(lo)}, {format_number(hi)}]"
                for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
            ],
            statistic: table["statistic"].map(format_number),
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


def model_markdown(result: dict[str, Any]) -> str:
    """Describe a model in Markdown: fixed effects, variance components, ICC, R², fit.

    Convergence, the optimiser and any boundary (singular) fit are printed under the table,
    never only in a log. (The plain-text companion of :func:`model_table`.)
    """
    from ..models.result import ddf_note  # the models package imports scipy: only when used

    fixed = to_markdown(
        fixed_effects_table(result),
        title=f"Model {result['name']}: {result['formula']}",
        note=ddf_note(result) + ".",
        statistic=_statistic(result),
    )
    random = pd.DataFrame(result["random"])
    lines = [fixed, "", "Variance components", ""]
    if not random.empty:
        shown = pd.DataFrame(
            {
                "Group": random["group"],
                "Term": random["term"],
                "Variance": random["variance"].map(lambda v: format_number(v, 3)),
                "SD": random["sd"].map(lambda v: format_number(v, 3)),
            }
        )
        lines.append(shown.to_markdown(index=False, disable_numparse=True))
    for c in result.get("covariances", []):
        lines.append(
            f"\n{c['group'].capitalize()} {c['term1']} with {c['term2']}: covariance "
            f"{format_number(c['covariance'], 3)}, "
            f"correlation {format_number(c['correlation'], 3)}."
        )
    lines.append(f"\nResidual variance {format_number(result['residual_variance'], 3)}.")
    icc = ", ".join(f"{k} {format_number(v, 3)}" for k, v in sorted(result.get("icc", {}).items()))
    lines.append(
        f"ICC: {icc}. Marginal R² {format_number(result.get('r2_marginal'), 3)}, conditional R² "
        f"{format_number(result.get('r2_conditional'), 3)}."
    )
    lines.append(_fit_sentence(result))
    lines.append(_convergence_sentence(result))
    return "\n".join(lines) + "\n"


def _statistic(result: dict[str, Any]) -> str:
    from ..models.result import ddf_method

    return "z" if ddf_method(result) == "containment" else "t"


def _df_sentence(results: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> str:
    """Which df each model's tests use: one clause when all agree, else one per model."""
    from ..models.result import ddf_note

    notes = [ddf_note(r) for r in results]
    if len(set(notes)) == 1:
        return notes[0] + "."
    names = list(names) if names is not None else [r["name"] for r in results]
    return " ".join(f"{m}: {n}." for m, n in zip(names, notes, strict=True))


def _fit_sentence(result: dict[str, Any]) -> str:
    groups = ", ".join(f"{v} {k}s" for k, v in sorted(result["n_groups"].items()))
    return (
        f"{result['n_obs']} observations ({groups}); {result.get('n_dropped_missing', 0)} rows "
        f"dropped for missing values. {'REML' if result['reml'] else 'ML'}: logLik "
        f"{format_number(result['loglik'])}, AIC {format_number(result['aic'])}, "
        f"BIC {format_number(result['bic'])}."
    )


def _boundary_words(item: str, labels: Any) -> str:
    """``"session | patient"`` → "patient session slope" (a random effect at the boundary)."""
    effect, _, group = (part.strip() for part in item.partition("|"))
    if not group:
        return item
    who = lower_first(_label(group, labels))
    if effect in ("(Intercept)", "Intercept", "1"):
        return f"{who} intercept"
    if effect == "correlation":
        return f"{who} correlation"
    return f"{who} {lower_first(_label(effect, labels))} slope"


def _convergence_sentence(
    result: dict[str, Any], labels: Any = None, name: str | None = None
) -> str:
    conv = result["convergence"]
    status = "converged" if conv["converged"] else "DID NOT CONVERGE"
    if labels is None:
        boundary = ", ".join(conv.get("boundary", [])) or "none"
    else:
        boundary = ", ".join(_boundary_words(b, labels) for b in conv.get("boundary", []))
        boundary = boundary or "none"
    warnings = "; ".join(conv.get("warnings", [])) or "none"
    grad = conv.get("max_abs_gradient")
    grad_text = "n/a" if grad is None else f"{grad:.2g}"
    who = f"Fit of {result['name']}" if name is None else name
    return (
        f"{who} {status} with optimiser {conv['optimizer']}; max |gradient| "
        f"{grad_text}; variances at the boundary: {boundary}; warnings: {warnings}."
    )


def model_table(
    results: Sequence[dict[str, Any]],
    *,
    labels: Labels | Mapping[str, str] | None = None,
    name: str = "models",
    title: str | None = None,
    number: int | None = None,
) -> Table:
    """APA table of one or several fitted models side by side.

    Parameters
    ----------
    results : sequence of dict
        Results of :func:`allianceflow.models.fit_model` (their ``name`` heads the
        columns; names must be unique).
    labels : Labels or mapping, optional
        The study's :class:`~allianceflow.labels.Labels` (terms in words, the reference
        arm stated, units and instrument names in the note), or a mapping of readable
        names of terms and groups; :data:`DEFAULT_LABELS` otherwise.
    name, title : str
        File stem and table title; by default the title is the model's research question
        (:meth:`~allianceflow.labels.Labels.question`), and several models are headed
        "Model 1", "Model 2" … with their questions in the note.
    number : int, optional
        The table's number in the study ("Table 3").

    Returns
    -------
    Table
        Sections *Fixed effects* (per term: b, SE, 95% CI, z, p for one model; b (SE),
        95% CI and p per model for several), *Random effects* (variances, residual last),
        with the covariance and correlation of each correlated pair, e.g. patient intercepts
        with time slopes), and *Model fit* (ICC per level, marginal and conditional R²,
        observations, groups, estimation, log-likelihood, AIC, BIC, convergence). ``data``
        is long: ``model, section, term, statistic, value`` with the unrounded numbers.

    Raises
    ------
    ValueError
        No results, or two results with the same name.
    """
    results = list(results)
    if not results:
        raise ValueError("`results` must hold at least one model result; got none.")
    names = [r["name"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"`results` must have unique names; got {names}.")
    single = len(results) == 1
    records: list[dict[str, Any]] = []
    for r in results:
        for f in r["fixed"]:
            for stat in ("estimate", "se", "ci_low", "ci_high", "statistic", "p"):
                records.append(
                    {
                        "model": r["name"],
                        "section": "fixed",
                        "term": f["term"],
                        "statistic": stat,
                        "value": f[stat],
                    }
                )
        for v in r["random"]:
            records.append(
                {
                    "model": r["name"],
                    "section": "random",
                    "term": f"{v['group']}: {v['term']}",
                    "statistic": "variance",
                    "value": v["variance"],
                }
            )
        for c in r.get("covariances", []):
            for stat in ("covariance", "correlation"):
                records.append(
                    {
                        "model": r["name"],
                        "section": "random",
                        "term": f"{c['group']}: {c['term1']} with {c['term2']}",
                        "statistic": stat,
                        "value": c[stat],
                    }
                )
        records.append(
            {
                "model": r["name"],
                "section": "random",
                "term": "Residual",
                "statistic": "variance",
                "value": r["residual_variance"],
            }
        )
        for g, v in r.get("icc", {}).items():
            records.append(
                {
                    "model": r["name"],
                    "section": "fit",
                    "term": f"ICC {g}",
                    "statistic": "value",
                    "value": v,
                }
            )
        for key in ("r2_marginal", "r2_conditional", "n_obs", "loglik", "aic", "bic", "n_params"):
            records.append(
                {
                    "model": r["name"],
                    "section": "fit",
                    "term": key,
                    "statistic": "value",
                    "value": r.get(key),
                }
            )
        for g, v in r["n_groups"].items():
            records.append(
                {
                    "model": r["name"],
                    "section": "fit",
                    "term": f"n_{g}",
                    "statistic": "value",
                    "value": v,
                }
            )
        records.append(
            {
                "model": r["name"],
                "section": "fit",
                "term": "converged",
                "statistic": "value",
                "value": float(bool(r["convergence"]["converged"])),
            }
        )
    data = pd.DataFrame(records, columns=["model", "section", "term", "statistic", "value"])

    stat = "z" if all(_statistic(r) == "z" for r in results) else "t"
    per_model = ["b", "SE", "95% CI", stat, "p"] if single else ["b (SE)", "95% CI", "p"]
    words = labels if isinstance(labels, Labels) else Labels()
    model_names = [f"Model {i}" for i in range(1, len(results) + 1)]
    headings = per_model if single else [f"{n} {c}" for n in model_names for c in per_model]
    width = len(headings)
    rows: list[list[str]] = []
    sections: list[int] = []

    def section(label: str) -> None:
        sections.append(len(rows))
        rows.append([label] + [""] * width)

    def cells(r: dict | None, f: dict | None) -> list[str]:
        if f is None:
            return [""] * len(per_model)
        ci = f"[{format_number(f['ci_low'])}, {format_number(f['ci_high'])}]"
        if single:
            return [
                format_number(f["estimate"]),
                format_number(f["se"]),
                ci,
                format_number(f["statistic"]),
                format_p(f["p"]),
            ]
        return [f"{format_number(f['estimate'])} ({format_number(f['se'])})", ci, format_p(f["p"])]

    def stat_row(label: str, values: list[str]) -> None:
        row = [label]
        for v in values:
            row += [v] + [""] * (len(per_model) - 1)
        rows.append(row)

    section("Fixed effects")
    terms: list[str] = []
    for r in results:
        terms += [f["term"] for f in r["fixed"] if f["term"] not in terms]
    for term in terms:
        row = [_label(term, labels)]
        for r in results:
            row += cells(r, next((f for f in r["fixed"] if f["term"] == term), None))
        rows.append(row)
    has_cov = any(r.get("covariances") for r in results)
    section("Random effects (variance, covariance)" if has_cov else "Random effects (variance)")
    components: list[tuple[str, str]] = []
    for r in results:
        components += [
            (v["group"], v["term"])
            for v in r["random"]
            if (v["group"], v["term"]) not in components
        ]
    for g, t in components:
        values = []
        for r in results:
            match = next((v for v in r["random"] if (v["group"], v["term"]) == (g, t)), None)
            values.append("" if match is None else format_number(match["variance"]))
        what = (
            "intercept"
            if t in ("(Intercept)", "Intercept", "1")
            else f"{lower_first(_label(t, labels))} slope"
        )
        stat_row(f"{_label(g, labels).capitalize()} {what}", values)
    pairs: list[tuple[str, str, str]] = []
    for r in results:
        pairs += [
            (c["group"], c["term1"], c["term2"])
            for c in r.get("covariances", [])
            if (c["group"], c["term1"], c["term2"]) not in pairs
        ]
    for g, t1, t2 in pairs:
        values = []
        for r in results:
            match = next(
                (
                    c
                    for c in r.get("covariances", [])
                    if (c["group"], c["term1"], c["term2"]) == (g, t1, t2)
                ),
                None,
            )
            values.append(
                ""
                if match is None
                else f"{format_number(match['covariance'])} (r = {format_r(match['correlation'])})"
            )
        names = [
            "intercept"
            if t in ("(Intercept)", "Intercept", "1")
            else f"{lower_first(_label(t, labels))} slope"
            for t in (t1, t2)
        ]
        stat_row(
            f"{_label(g, labels).capitalize()} {names[0]} with {names[1]}, covariance (r)", values
        )
    stat_row("Residual", [format_number(r["residual_variance"]) for r in results])
    section("Model fit")
    levels: list[str] = []
    for r in results:
        levels += [g for g in r.get("icc", {}) if g not in levels]
    for g in levels:
        stat_row(
            f"ICC, {lower_first(_label(g, labels))}",
            [format_r(r.get("icc", {}).get(g)) for r in results],
        )
    stat_row("Marginal R²", [format_r(r.get("r2_marginal")) for r in results])
    stat_row("Conditional R²", [format_r(r.get("r2_conditional")) for r in results])
    stat_row("Observations", [str(r["n_obs"]) for r in results])
    groups: list[str] = []
    for r in results:
        groups += [g for g in r["n_groups"] if g not in groups]
    for g in groups:
        stat_row(
            f"{_label(g, labels).capitalize()}s", [str(r["n_groups"].get(g, "")) for r in results]
        )
    stat_row("Estimation", ["REML" if r["reml"] else "ML" for r in results])
    stat_row("Log-likelihood", [format_number(r["loglik"]) for r in results])
    stat_row("AIC", [format_number(r["aic"]) for r in results])
    stat_row("BIC", [format_number(r["bic"]) for r in results])
    stat_row("Converged", ["yes" if r["convergence"]["converged"] else "NO" for r in results])

    body = pd.DataFrame(rows, columns=["Parameter", *headings])
    y = lower_first(words.variable("outcome"))
    a = lower_first(words.variable("alliance"))
    if single:
        which = f"Random effects: {words.random_part(results[0].get('formula', ''))}. "
    else:
        which = (
            " ".join(
                f"{m} = {lower_first(words.question(r))}." for m, r in zip(model_names, results)
            )
            + " "
        )
    units = (
        f"b = unstandardised coefficient, in {y} points per one-unit change of the predictor "
        f"(one point of the {a}, one session; for an arm contrast, the difference from the "
        "reference arm; × = interaction); "
        if words.outcome
        else "b = unstandardised coefficient; "
    )
    instruments = "; ".join(f"{k} = {v}" for k, v in sorted(words.names.items()))
    note = (
        f"{which}{units}SE = standard error; CI = confidence interval; {stat} = test "
        f"statistic; p two-sided. {_df_sentence(results, model_names)} ICC = intraclass "
        "correlation, the share of the random-effects plus residual variance at each level; "
        "R² after Nakagawa and Schielzeth (2013); REML = restricted maximum likelihood; "
        "ML = maximum likelihood; AIC = Akaike information criterion; "
        "BIC = Bayesian information criterion"
        + (f"; {instruments}" if instruments else "")
        + ". "
        + " ".join(
            _convergence_sentence(r, words, "The fit" if single else m)
            for m, r in zip(model_names, results)
        )
    )
    if title is None:
        title = (
            title_case(words.question(results[0]))
            if single
            else f"Multilevel Models {model_names[0][6:]}–{len(results)} of "
            f"{title_case(words.variable('outcome'))} Side by Side"
        )
    return Table(
        name=name,
        title=title,
        body=body,
        data=data,
        note=note,
        sections=tuple(sections),
        number=number,
    )
