"""The rows and the fixed-effects design a model uses: complete cases, what was dropped, rank.

Every back-end fits the complete cases of the formula's variables (listwise deletion, as
lme4's default ``na.action = na.omit``). :func:`model_rows` selects them once;
:func:`missing_by_variable` says which variable emptied how many rows, so that a result
accounts for every row it did not use; :func:`check_rank` refuses a fixed-effects design
that cannot be estimated, naming the columns at fault.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from allianceflow.models.formula import FormulaSpec, ModelError, formula_variables

__all__ = ["ModelError", "model_rows", "missing_by_variable", "check_rank", "check_identifiable"]


def model_rows(data: pd.DataFrame, spec: FormulaSpec) -> tuple[pd.DataFrame, int]:
    """Select the rows a model uses: its variables, rows with any missing value dropped.

    Returns
    -------
    (pandas.DataFrame, int)
        The complete rows (index reset) and how many rows were dropped.

    Raises
    ------
    KeyError
        A variable is not a column (:func:`allianceflow.models.formula.formula_variables`).
    ValueError
        No row is complete.
    """
    variables = formula_variables(spec, data.columns)
    keep = data[variables].notna().all(axis=1).to_numpy()
    rows = data.loc[keep, variables].reset_index(drop=True)
    if len(rows) == 0:
        raise ModelError(
            f"`data` has no complete rows for the model variables {variables} "
            f"(all {len(data)} rows have a missing value in at least one)."
        )
    return rows, int((~keep).sum())


def missing_by_variable(data: pd.DataFrame, spec: FormulaSpec) -> dict[str, int]:
    """Rows with a missing value, per model variable, in the order the formula uses them.

    Returns
    -------
    dict
        ``{variable: rows missing it}`` for every variable of the formula (0 included, so
        that a reader sees each variable was checked). A row missing several variables is
        counted under each, so the counts can add up to more than the rows dropped
        (``n_dropped_missing``, the rows missing at least one).

    Examples
    --------
    >>> from allianceflow.models.formula import parse_formula
    >>> d = pd.DataFrame({"y": [1.0, None, 3.0, None], "x": [1.0, 2.0, None, None],
    ...                   "g": ["a", "a", "b", "b"]})
    >>> missing_by_variable(d, parse_formula("y ~ x + (1 | g)"))
    {'y': 2, 'x': 2, 'g': 0}
    """
    variables = formula_variables(spec, data.columns)
    counts = data[variables].isna().sum()
    return {v: int(counts[v]) for v in variables}


def check_rank(exog: np.ndarray, names: list[str]) -> None:
    """Refuse a rank-deficient fixed-effects design, naming the columns that cause it.

    Raises
    ------
    ValueError
        The design's rank is below its number of columns. The message names the columns
        constant in the rows used, or else the columns that are combinations of earlier ones.
    """
    rank = np.linalg.matrix_rank(exog)
    if rank == exog.shape[1]:
        return
    constant = [
        n for n, col in zip(names, exog.T, strict=True) if n != "Intercept" and np.ptp(col) == 0
    ]
    redundant = []
    kept: list[int] = []
    for j, name in enumerate(names):
        if np.linalg.matrix_rank(exog[:, kept + [j]]) == len(kept) + 1:
            kept.append(j)
        else:
            redundant.append(name)
    detail = (
        f"constant in the rows used: {', '.join(constant)}"
        if constant
        else f"a combination of earlier terms: {', '.join(redundant)}"
    )
    raise ModelError(
        f"The fixed effects cannot all be estimated from the {exog.shape[0]} complete rows: "
        f"{detail}. Drop or recode these terms, or check which rows are missing (rows with a "
        "missing value in any model variable are dropped)."
    )


def check_identifiable(rows: pd.DataFrame, spec: FormulaSpec) -> None:
    """Refuse data in which the residual variance cannot be told apart from the others.

    As lme4 does (its checks ``check.nobs.vs.nlev`` and ``check.nobs.vs.nRE``, both
    "stop" by default): the response must vary; every grouping factor must have fewer
    levels than there are rows; every random term must have fewer random effects (levels
    times effects) than there are rows.

    Raises
    ------
    ModelError
        With the factor or term at fault and what to do.
    """
    n = len(rows)
    y = rows[spec.response]
    if y.nunique() < 2:
        raise ModelError(
            f"`formula` {spec.formula!r}: the response {spec.response!r} takes the single value "
            f"{y.iloc[0]} in all {n} complete rows, so there is nothing to model. Check the "
            "outcome column and the rows kept."
        )
    for factor in spec.factors:
        label = ":".join(factor)
        n_levels = int(rows[list(factor)].drop_duplicates().shape[0])
        if n_levels >= n:
            raise ModelError(
                f"`formula` {spec.formula!r}: the grouping factor {label!r} has as many levels "
                f"({n_levels}) as there are complete rows ({n}), so its variance cannot be told "
                "apart from the residual variance (lme4 stops here too). A random effect needs "
                f"repeated rows per {label}; drop the term or check the ids."
            )
        for term in spec.random:
            if term.factor == factor and n_levels * len(term.effects) >= n:
                raise ModelError(
                    f"`formula` {spec.formula!r}: the random term {term.source!r} has "
                    f"{n_levels * len(term.effects)} random effects ({n_levels} levels x "
                    f"{len(term.effects)} effects) for {n} complete rows, so they cannot be "
                    "told apart from the residual (lme4 stops here too). Drop random slopes "
                    "or use data with more rows per unit."
                )
