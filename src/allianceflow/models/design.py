"""The rows and the fixed-effects design a model uses: complete cases, what was dropped, rank.

Every back-end fits the complete cases of the formula's variables (listwise deletion, as
lme4's default ``na.action = na.omit``). :func:`model_rows` selects them once;
:func:`missing_by_variable` says which variable emptied how many rows, so that a result
accounts for every row it did not use; :func:`check_rank` refuses a fixed-effects design
that cannot be estimated, naming the columns at fault. :func:`group_codes` is the one way
the models identify the levels of a grouping factor (one column, or several for an
interaction such as ``therapist:patient``), :func:`level_labels` the one way they name them,
and :func:`nested_in` the one test that a factor is nested in another.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator

import numpy as np
import pandas as pd

from allianceflow.models.formula import FormulaSpec, ModelError, formula_variables

__all__ = [
    "ModelError",
    "model_rows",
    "missing_by_variable",
    "complete_rows",
    "check_rank",
    "check_identifiable",
    "group_codes",
    "shared_codes",
    "level_labels",
    "nested_in",
    "fixed_design",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def fixed_design(spec: FormulaSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """The fixed-effects design of *spec* on the complete *rows* (index reset).

    The same matrix and column names as ``patsy.dmatrix(spec.fixed, rows)``: when the fixed
    part is an intercept and distinct plain columns of a numeric (not boolean) type, the
    columns are taken as they are, without patsy's formula machinery (which costs more than
    fitting a small model); anything else (factors, interactions, transformations, no
    intercept) goes to patsy. Inside a :func:`shared_codes` block on these very *rows* the
    design is built once and shared (the fit and its Satterthwaite or Kenward–Roger df both
    need it); callers must not change it.
    """
    shared = _SHARED.get()
    store = shared[1] if shared is not None and shared[0] is rows else None
    key = ("fixed design", spec.fixed, None)  # no grouping factor has this key
    if store is not None and key in store:
        return store[key]
    design = _fixed_design(spec, rows)
    if store is not None:
        store[key] = design
    return design


def _fixed_design(spec: FormulaSpec, rows: pd.DataFrame) -> pd.DataFrame:
    terms = [t.strip() for t in spec.fixed.split("+")]
    if terms and terms[0] == "1":
        terms = terms[1:]
    simple = (
        len(set(terms)) == len(terms)
        and all(_NAME.match(t) and t in rows.columns and t != "Intercept" for t in terms)
        and all(
            pd.api.types.is_numeric_dtype(rows[t]) and not pd.api.types.is_bool_dtype(rows[t])
            for t in terms
        )
    )
    if simple:
        columns = {"Intercept": np.ones(len(rows))}
        columns.update({t: rows[t].to_numpy(dtype=float) for t in terms})
        return pd.DataFrame(columns)
    import patsy

    design = patsy.dmatrix(spec.fixed, rows, return_type="dataframe", eval_env=0)
    return design.reset_index(drop=True)


#: The frame whose grouping codes are being shared (:func:`shared_codes`) and its codes.
_SHARED: contextvars.ContextVar = contextvars.ContextVar("allianceflow_shared_codes", default=None)


@contextlib.contextmanager
def shared_codes(rows: pd.DataFrame) -> Iterator[None]:
    """Compute each grouping factor's codes on *rows* once, for the duration of the block.

    A fit asks for the levels of the same factors on the same rows several times (the
    few-level check, the identifiability check, the nesting test, the engine, the
    containment df, the Satterthwaite or Kenward–Roger df); on string ids of 10^5 rows each
    ``pandas.factorize`` costs tens of milliseconds. Inside the block, :func:`group_codes`
    called with this very frame (the same object, not an equal one) returns codes it has
    already computed, and :func:`fixed_design` the design it has already built. The frame
    must not be changed inside the block; :func:`allianceflow.models.fit_model` uses it on the
    complete rows it made itself.

    Examples
    --------
    >>> d = pd.DataFrame({"g": ["b", "a", "b"]})
    >>> with shared_codes(d):
    ...     first = group_codes(d, ("g",))[0]
    ...     group_codes(d, ("g",))[0] is first
    True
    """
    token = _SHARED.set((rows, {}))
    try:
        yield
    finally:
        _SHARED.reset(token)


def group_codes(
    data: pd.DataFrame, factor: tuple[str, ...], *, sort: bool = True
) -> tuple[np.ndarray, pd.DataFrame]:
    """Integer codes of a grouping factor's levels, and the levels.

    Every model module identifies grouping levels through this function, so that a level is
    the same unit whichever back-end, df method or check looks at it.

    Parameters
    ----------
    data : pandas.DataFrame
        Rows without missing values in the factor's columns.
    factor : tuple of str
        One column, or several for an interaction (``("therapist", "patient")`` for
        ``therapist:patient``): a level is a distinct combination of their values.
    sort : bool, default True
        Number the levels in sorted order; False numbers them in any order (order of
        appearance, or sorted when the sorted codes are already at hand in a
        :func:`shared_codes` block), which is cheaper and enough to count levels or compare
        partitions.

    Returns
    -------
    (numpy.ndarray, pandas.DataFrame)
        One int64 code per row, 0 .. m - 1 (in the sorted order of the levels when
        ``sort``), and the *m* levels in the order of their codes (one row each, the
        factor's columns).

    Examples
    --------
    >>> d = pd.DataFrame({"t": ["b", "a", "b"], "p": [1, 1, 2]})
    >>> codes, levels = group_codes(d, ("t", "p"))
    >>> codes.tolist(), level_labels(levels)
    ([1, 0, 2], ['a:1', 'b:1', 'b:2'])
    """
    factor = tuple(factor)
    shared = _SHARED.get()
    store = shared[1] if shared is not None and shared[0] is data else None
    if store is not None:
        hit = store.get(factor)
        if hit is not None:
            return hit
        sort = True  # shared codes serve every caller: number the levels in sorted order
    if len(factor) == 1:
        codes, uniques = pd.factorize(data[factor[0]], sort=sort)
        out = codes.astype(np.int64), pd.DataFrame({factor[0]: np.asarray(uniques)})
    else:
        mi = pd.MultiIndex.from_frame(data[list(factor)])
        codes, uniques = pd.factorize(mi, sort=sort)
        out = codes.astype(np.int64), uniques.to_frame(index=False)
    if store is not None:
        out[0].setflags(write=False)  # shared: no caller may change them
        store[factor] = out
    return out


def level_labels(levels: pd.DataFrame) -> list[str]:
    """Name each level of :func:`group_codes`: its values as text, joined by ``:``."""
    if levels.shape[1] == 1:
        return [str(v) for v in levels.iloc[:, 0]]
    return [":".join(map(str, row)) for row in levels.itertuples(index=False, name=None)]


def nested_in(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether every level of *inner* lies within one level of *outer* (codes, one per row).

    >>> nested_in(np.array([0, 0, 1, 2]), np.array([5, 5, 5, 6]))
    True
    >>> nested_in(np.array([0, 0, 1]), np.array([5, 6, 6]))
    False
    """
    if inner.size == 0:
        return True
    last = np.full(int(inner.max()) + 1, -1, dtype=np.int64)
    last[inner] = outer  # the outer level of each inner level's last row
    return bool(np.array_equal(last[inner], outer))


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
    keep = np.ones(len(data), dtype=bool)
    for v in variables:
        keep &= data[v].notna().to_numpy()
    rows = data[variables]
    rows = (rows if keep.all() else rows.loc[keep]).reset_index(drop=True)
    if len(rows) == 0:
        raise ModelError(
            f"`data` has no complete rows for the model variables {variables} "
            f"(all {len(data)} rows have a missing value in at least one)."
        )
    return rows, int((~keep).sum())


def complete_rows(data: pd.DataFrame, spec: FormulaSpec) -> tuple[pd.DataFrame, int, dict]:
    """:func:`model_rows` and :func:`missing_by_variable` in one pass over the variables.

    Returns
    -------
    (pandas.DataFrame, int, dict)
        The complete rows (index reset), how many rows were dropped, and the rows missing
        each variable.

    Raises
    ------
    KeyError, ValueError
        As :func:`model_rows`.
    """
    variables = formula_variables(spec, data.columns)
    keep = np.ones(len(data), dtype=bool)
    by_variable = {}
    for v in variables:
        present = data[v].notna().to_numpy()
        by_variable[v] = int(len(present) - np.count_nonzero(present))
        keep &= present
    rows = data[variables]
    rows = (rows if keep.all() else rows.loc[keep]).reset_index(drop=True)
    if len(rows) == 0:
        raise ModelError(
            f"`data` has no complete rows for the model variables {variables} "
            f"(all {len(data)} rows have a missing value in at least one)."
        )
    return rows, int((~keep).sum()), by_variable


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
        n_levels = len(group_codes(rows, factor, sort=False)[1])
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
