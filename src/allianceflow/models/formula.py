"""Parse model formulas written in lme4 syntax and translate them to statsmodels MixedLM.

Researchers write multilevel models the way lme4 (Bates et al. 2015) taught them to::

    outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 | patient)

:func:`parse_formula` turns such a string into a :class:`FormulaSpec` (response, fixed part,
random terms), and :func:`to_mixedlm` turns a spec plus the data into the arguments of
``statsmodels.regression.mixed_linear_model.MixedLM.from_formula`` (``groups``,
``re_formula``, ``vc_formula``).

What MixedLM can and cannot express
-----------------------------------
MixedLM has one *grouping factor* (``groups``) whose random effects may be correlated
(``re_formula``, an unstructured covariance matrix), plus any number of *variance components*
(``vc_formula``) nested inside the groups, each an independent random effect with its own
variance. Hence:

* the outermost grouping factor (the one every other factor is nested in, e.g. therapist
  when patients are nested in therapists) may have correlated random intercepts and slopes,
  ``(1 + session | therapist)``;
* every inner factor (patient inside therapist) may have random intercepts and slopes, but
  they are independent of one another: write ``(1 + session || patient)``. A correlated
  block ``(1 + session | patient)`` at an inner level raises :class:`ValueError` naming the
  term and the alternatives (uncorrelated slopes, or dropping the outer level);
* crossed factors (neither nested in the other) are fitted as variance components of a single
  all-data group; they too must be uncorrelated (and the fit is slow on large data);
* random-effect terms must be column names (derive ``log_session`` first); the fixed part
  may use interactions (``a*b``, ``a:b``), ``I(x^2)`` and ``log(x)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import pandas as pd

from allianceflow.io import DataError

__all__ = [
    "RandomTerm",
    "FormulaSpec",
    "MixedLMPlan",
    "parse_formula",
    "to_mixedlm",
    "formula_variables",
    "drop_effects",
]

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")
_CBIND = re.compile(r"^cbind\(\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*,\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*\)$")
_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_FUNCTIONS = {"I", "C", "log", "exp", "sqrt", "np", "center", "scale", "Q", "abs"}


class ModelError(DataError):
    """The data cannot support the model asked for; the message says why and what to do.

    A :class:`~allianceflow.io.DataError` (and so a ``ValueError``): the pipeline prints its
    one paragraph without a traceback.
    """


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects block, e.g. ``(1 + session | patient)``.

    Attributes
    ----------
    factor : tuple of str
        The grouping factor's columns; ``("therapist", "patient")`` is ``therapist:patient``.
    intercept : bool
        Whether the block has a random intercept.
    slopes : tuple of str
        Column names with random slopes.
    correlated : bool
        ``False`` for ``||`` (and for single-effect blocks, where it does not matter).
    source : str
        The text the block came from, for error messages.
    """

    factor: tuple[str, ...]
    intercept: bool
    slopes: tuple[str, ...]
    correlated: bool
    source: str

    @property
    def label(self) -> str:
        """The grouping factor as lme4 prints it (``therapist:patient``)."""
        return ":".join(self.factor)

    @property
    def effects(self) -> tuple[str, ...]:
        """Effect names, ``"(Intercept)"`` first when present."""
        return (("(Intercept)",) if self.intercept else ()) + self.slopes


@dataclass(frozen=True)
class FormulaSpec:
    """A parsed lme4 formula.

    Attributes
    ----------
    formula : str
        The formula as given.
    response : str
        Left-hand side.
    fixed : str
        Right-hand side of the fixed part, in the formula engine's syntax (``^`` inside
        ``I()`` becomes ``**``, ``log(`` becomes ``np.log(``).
    random : tuple of RandomTerm
        Random-effect blocks, with ``a/b`` expanded to ``a`` and ``a:b`` as lme4 does.
    cbind : tuple of (str, str) or None
        For lme4's binomial response ``cbind(successes, failures)``: the two columns
        (``response`` is then the successes column); None for a single-column response.
    """

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...] = field(default_factory=tuple)
    cbind: tuple[str, str] | None = None

    @property
    def factors(self) -> tuple[tuple[str, ...], ...]:
        """Distinct grouping factors in order of first appearance."""
        seen: list[tuple[str, ...]] = []
        for term in self.random:
            if term.factor not in seen:
                seen.append(term.factor)
        return tuple(seen)


@dataclass(frozen=True)
class MixedLMPlan:
    """Arguments for ``MixedLM.from_formula`` and the labels to report them under.

    Attributes
    ----------
    formula : str
        ``response ~ fixed`` in the formula engine's syntax.
    groups : str
        Column holding the outer grouping factor (``"_all"`` for crossed designs).
    re_formula : str or None
        Random effects of the outer factor (correlated), ``None`` when it has none.
    vc_formula : dict
        ``{"vc0": "0 + C(patient)", ...}``: independent variance components.
    re_labels : list of (group, term)
        One entry per column of ``re_formula``.
    vc_labels : dict
        ``{"vc0": (group, term)}``.
    derived_columns : dict
        Columns to add to the data before fitting:
        ``{"_g_therapist_patient": ("therapist", "patient")}``.
    variables : list of str
        Every data column the model uses (response, fixed, slopes, factors).
    outer : str
        The outer grouping factor's label (``"therapist"``), or ``""`` for crossed designs.
    """

    formula: str
    groups: str
    re_formula: str | None
    vc_formula: dict[str, str]
    re_labels: list[tuple[str, str]]
    vc_labels: dict[str, tuple[str, str]]
    derived_columns: dict[str, tuple[str, ...]]
    variables: list[str]
    outer: str


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` where parentheses are balanced (depth 0)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"`formula` has an unmatched ')' in {text!r}.")
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    if depth != 0:
        raise ValueError(f"`formula` has an unmatched '(' in {text!r}.")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _is_wrapped(term: str) -> bool:
    """Tell whether ``term`` is ``( ... )`` with the outer parentheses matching each other."""
    if not (term.startswith("(") and term.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(term):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(term) - 1:
            return False
    return True


def _translate_fixed(term: str) -> str:
    """lme4/R spellings to the Python formula engine's spellings."""
    if re.search(r"\bpoly\s*\(", term):
        raise ValueError(
            f"fixed term {term!r}: poly() is not supported; write the powers out, "
            "e.g. 'session + I(session^2)', or derive centred columns first."
        )
    if re.search(r"\bns\s*\(|\bbs\s*\(", term):
        raise ValueError(
            f"fixed term {term!r}: spline bases are not supported; derive the basis columns first."
        )
    out = term.replace("^", "**")
    out = re.sub(r"(?<![\w.])(log|exp|sqrt)\s*\(", r"np.\1(", out)
    return out


def _parse_random(inner: str, source: str) -> list[RandomTerm]:
    parts = _split_top(inner, "||")
    correlated = True
    if len(parts) == 2:
        correlated = False
    elif len(parts) == 1:
        parts = _split_top(inner, "|")
        if len(parts) != 2:
            raise ValueError(
                f"random term {source!r}: expected exactly one '|' (or '||') between "
                "effects and grouping factor, e.g. '(1 + session | patient)'."
            )
    else:
        raise ValueError(f"random term {source!r}: more than one '||'.")
    lhs, rhs = parts
    if not lhs:
        raise ValueError(f"random term {source!r}: nothing before '|'; write '(1 | {rhs})'.")
    if not rhs:
        raise ValueError(f"random term {source!r}: no grouping factor after '|'.")
    intercept = True
    slopes: list[str] = []
    for eff in _split_top(lhs.replace("-", "+-"), "+"):
        eff = eff.replace(" ", "")
        if eff == "":
            continue
        if eff == "1":
            intercept = True
        elif eff in {"0", "-1"}:
            intercept = False
        elif _NAME.match(eff):
            if eff not in slopes:
                slopes.append(eff)
        else:
            raise ValueError(
                f"random term {source!r}: random slope {eff!r} is not a column name. "
                "MixedLM needs plain columns here: derive the variable first "
                "(e.g. a 'log_session' column) and write '(1 + log_session | patient)'."
            )
    if not intercept and not slopes:
        raise ValueError(f"random term {source!r}: no random effects left ('0' and no slopes).")
    # grouping factor: a, a:b, a/b, a/b/c
    if "+" in rhs or "*" in rhs or "(" in rhs:
        raise ValueError(
            f"random term {source!r}: grouping factor {rhs!r} is not supported; use a "
            "single factor 'g', an interaction 'g1:g2' or nesting 'g1/g2'."
        )
    levels = [lvl.strip() for lvl in rhs.split("/")]
    for lvl in levels:
        for name in lvl.split(":"):
            if not _NAME.match(name.strip()):
                raise ValueError(
                    f"random term {source!r}: grouping factor {name.strip()!r} is not a "
                    "column name."
                )
    factors: list[tuple[str, ...]] = []
    acc: tuple[str, ...] = ()
    for lvl in levels:
        acc = acc + tuple(n.strip() for n in lvl.split(":"))
        factors.append(acc)
    n_eff = int(intercept) + len(slopes)
    terms = []
    for fac in factors:
        terms.append(
            RandomTerm(
                factor=fac,
                intercept=intercept,
                slopes=tuple(slopes),
                correlated=correlated and n_eff > 1,
                source=source,
            )
        )
    return terms


def parse_formula(formula: str) -> FormulaSpec:
    """Parse an lme4 model formula.

    Parameters
    ----------
    formula : str
        ``response ~ fixed terms + (random | factor) ...``; the response is a column, or
        for a binomial model lme4's ``cbind(successes, failures)`` of two columns.
        Supported random parts:
        ``(1 | g)``, ``(1 + x | g)`` (correlated), ``(0 + x | g)``, ``(1 + x || g)``
        (uncorrelated), ``(1 | g1/g2)`` (nested: expands to ``(1 | g1) + (1 | g1:g2)``) and
        ``(1 | g1:g2)``. Fixed part: ``a + b``, ``a*b``, ``a:b``, ``I(x^2)``, ``log(x)``,
        ``0 +``/``- 1`` to drop the intercept.

    Returns
    -------
    FormulaSpec

    Raises
    ------
    TypeError
        If ``formula`` is not a string.
    ValueError
        If the formula has no ``~``, no response, unbalanced parentheses, or a random part
        outside the supported forms; the message names the part and what to write instead.

    Examples
    --------
    >>> spec = parse_formula("y ~ x + (1 + x || patient)")
    >>> spec.response, spec.fixed, [t.effects for t in spec.random]
    ('y', 'x', [('(Intercept)', 'x')])
    >>> [t.label for t in parse_formula("y ~ 1 + (1 | therapist/patient)").random]
    ['therapist', 'therapist:patient']
    """
    if not isinstance(formula, str):
        raise TypeError(f"`formula` must be a string; got {type(formula).__name__}.")
    sides = formula.split("~")
    if len(sides) != 2:
        raise ValueError(
            f"`formula` must have exactly one '~' (response ~ predictors); got {formula!r}."
        )
    response, rhs = sides[0].strip(), sides[1].strip()
    if not response:
        raise ValueError(f"`formula` has no response before '~'; got {formula!r}.")
    cbind = _CBIND.match(response)
    if cbind is None and response.replace(" ", "").startswith("cbind("):
        raise ValueError(
            f"`formula` response {response!r}: write a binomial response as "
            "'cbind(successes, failures)' with two column names."
        )
    if cbind is None and not _NAME.match(response):
        raise ValueError(f"`formula` response {response!r} must be a column name; derive it first.")
    if not rhs:
        raise ValueError(f"`formula` has nothing after '~'; got {formula!r}.")
    fixed_terms: list[str] = []
    random_terms: list[RandomTerm] = []
    for term in _split_top(rhs, "+"):
        if term == "":
            raise ValueError(f"`formula` has an empty term (two '+' in a row?): {formula!r}.")
        if _is_wrapped(term) and "|" in term:
            inner = term[1:-1].strip()
            random_terms.extend(_parse_random(inner, term))
        elif "|" in term:
            raise ValueError(
                f"`formula` term {term!r} has '|' outside parentheses; write random "
                "effects as '(1 | group)'."
            )
        else:
            pieces = _split_top(term, "-")
            if pieces[0]:
                fixed_terms.append(pieces[0])
            for piece in pieces[1:]:
                if piece in {"1", "0"}:
                    fixed_terms.append("-1")
                else:
                    raise ValueError(
                        f"`formula` term {term!r}: removing terms with '-' is supported only "
                        "for the intercept ('- 1'); leave the term out instead."
                    )
    fixed_out: list[str] = []
    for t in fixed_terms:
        if t == "-1":
            fixed_out.append("0")
        else:
            fixed_out.append(_translate_fixed(t))
    if not fixed_out:
        fixed_out = ["1"]
    # '0' must come first for the formula engine to drop the intercept cleanly
    if "0" in fixed_out:
        fixed_out = ["0"] + [t for t in fixed_out if t not in {"0", "1"}]
    return FormulaSpec(
        formula=formula.strip(),
        response=cbind.group(1) if cbind else response,
        fixed=" + ".join(fixed_out),
        random=tuple(random_terms),
        cbind=(cbind.group(1), cbind.group(2)) if cbind else None,
    )


def drop_effects(spec: FormulaSpec, drop: list[tuple[str, str]]) -> FormulaSpec:
    """Return the spec without the random effects *drop* (``(group label, effect)`` pairs).

    A block keeps its other effects (and its correlation when two or more remain); a block
    left without effects goes. The formula text is kept as given.
    """
    terms: list[RandomTerm] = []
    for t in spec.random:
        gone = {e for g, e in drop if g == t.label}
        if not gone:
            terms.append(t)
            continue
        intercept = t.intercept and "(Intercept)" not in gone
        slopes = tuple(s for s in t.slopes if s not in gone)
        if intercept or slopes:
            terms.append(
                replace(
                    t,
                    intercept=intercept,
                    slopes=slopes,
                    correlated=t.correlated and (int(intercept) + len(slopes)) > 1,
                )
            )
    return replace(spec, random=tuple(terms))


def formula_variables(spec: FormulaSpec, columns) -> list[str]:
    """List the data columns a parsed formula uses, in order of first appearance.

    Identifiers in the fixed part that are not columns (``np``, ``log``, ``I``) are skipped.
    """
    cols = set(columns)
    out: list[str] = []

    def add(name: str) -> None:
        if name not in out:
            out.append(name)

    add(spec.response)
    if spec.cbind is not None:
        add(spec.cbind[1])
    for ident in _IDENT.findall(spec.fixed):
        if ident in cols:
            add(ident)
        elif ident not in _FUNCTIONS and not ident.startswith("np.") and not ident[0] == ".":
            raise KeyError(
                f"`formula` uses {ident!r}, which is not a column; columns are "
                f"{sorted(cols)}{_closest(ident, cols)}."
            )
    for term in spec.random:
        for kind, names in (("slope", term.slopes), ("grouping factor", term.factor)):
            for name in names:
                if name not in cols:
                    raise KeyError(
                        f"random term {term.source!r}: {kind} {name!r} is not a column; "
                        f"columns are {sorted(cols)}{_closest(name, cols)}."
                    )
                add(name)
    for response in spec.cbind or (spec.response,):
        if response not in cols:
            raise KeyError(
                f"`formula` response {response!r} is not a column; columns are "
                f"{sorted(cols)}{_closest(response, cols)}."
            )
    return out


def _closest(name: str, cols) -> str:
    import difflib

    match = difflib.get_close_matches(name, sorted(map(str, cols)), n=1)
    return f" (closest: {match[0]!r})" if match else ""


def _key(data: pd.DataFrame, factor: tuple[str, ...]) -> pd.Series:
    if len(factor) == 1:
        return data[factor[0]].astype(str)
    return data[list(factor)].astype(str).agg(":".join, axis=1)


def _nested_in(data: pd.DataFrame | None, inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    """Tell whether every level of ``inner`` lies within one level of ``outer``."""
    if inner == outer:
        return True
    if len(inner) > len(outer) and inner[: len(outer)] == outer:
        return True  # syntactic: therapist:patient inside therapist
    if data is None:
        return False
    k_in, k_out = _key(data, inner), _key(data, outer)
    return bool((pd.DataFrame({"i": k_in, "o": k_out}).groupby("i")["o"].nunique() <= 1).all())


def _uncorrelated(term: RandomTerm) -> str:
    """Write *term* with uncorrelated effects, ``(1 + x || g)``, for error messages."""
    if term.intercept:
        effects = " + ".join(("1",) + term.slopes)
    else:
        effects = "0 + " + " + ".join(term.slopes)
    return f"({effects} || {term.label})"


def _colname(factor: tuple[str, ...]) -> str:
    return factor[0] if len(factor) == 1 else "_g_" + "_".join(factor)


def to_mixedlm(spec: FormulaSpec, data: pd.DataFrame | None = None) -> MixedLMPlan:
    """Translate a parsed formula into ``MixedLM.from_formula`` arguments.

    Parameters
    ----------
    spec : FormulaSpec
        From :func:`parse_formula`.
    data : DataFrame, optional
        Used to decide which factors are nested in which (every level of the inner factor
        within one level of the outer). Without data only syntactic nesting (``g1/g2``,
        ``g1:g2``) is recognised and distinct factors are treated as crossed.

    Returns
    -------
    MixedLMPlan

    Raises
    ------
    ValueError
        If the formula has no random part, or asks for correlated random effects at a level
        MixedLM can only model with independent variance components (an inner nested factor
        or a crossed factor). The message names the term and what to write instead.

    Notes
    -----
    The outer factor (the one all others are nested in) becomes ``groups``; its first
    random-effects block becomes ``re_formula`` (correlated, unstructured covariance) and any
    further blocks for it (``||`` or repeated terms) become variance components. Each effect
    of an inner factor ``f`` becomes a variance component ``0 + C(f)`` (intercept) or
    ``0 + C(f):x`` (slope). Because variance components are evaluated within each outer group,
    ``(1 | patient)`` with patients nested in therapists fits the same model as lme4's
    ``(1 | therapist/patient)`` even when patient ids repeat across therapists.
    """
    if not spec.random:
        raise ValueError(
            f"`formula` {spec.formula!r} has no random part; add e.g. '(1 | patient)' "
            "(for a model without random effects use ordinary regression)."
        )
    factors = list(spec.factors)
    if data is not None:
        variables = formula_variables(spec, data.columns)
    else:
        variables = [spec.response] + [s for t in spec.random for s in t.slopes]
        variables += [f for t in spec.random for f in t.factor]
        variables = list(dict.fromkeys(variables))
    outer = None
    for cand in sorted(factors, key=len):
        if all(_nested_in(data, other, cand) for other in factors):
            outer = cand
            break
    derived: dict[str, tuple[str, ...]] = {}
    for fac in factors:
        if len(fac) > 1:
            derived[_colname(fac)] = fac
    re_formula: str | None = None
    re_labels: list[tuple[str, str]] = []
    vc_formula: dict[str, str] = {}
    vc_labels: dict[str, tuple[str, str]] = {}

    def add_vc(term: RandomTerm, effect: str) -> None:
        col = _colname(term.factor)
        name = f"vc{len(vc_formula)}"
        if effect == "(Intercept)":
            fml = f"0 + C({col})"
        else:
            fml = f"0 + C({col}):{effect}"
        if (term.label, effect) in vc_labels.values():
            raise ValueError(
                f"random term {term.source!r}: the {effect} effect for {term.label!r} "
                "appears twice in the formula."
            )
        vc_formula[name] = fml
        vc_labels[name] = (term.label, effect)

    if outer is None:
        groups = "_all"
        for term in spec.random:
            if term.correlated:
                raise ModelError(
                    f"random term {term.source!r}: the grouping factors "
                    f"{[':'.join(f) for f in factors]} are crossed (not nested), and MixedLM "
                    "fits crossed factors only as independent variance components. Write "
                    f"'{_uncorrelated(term)}' "
                    "(uncorrelated; for a preset model, the option `slopes: uncorrelated`), or "
                    "check that the data nest one factor in the other."
                )
            for eff in term.effects:
                add_vc(term, eff)
        outer_label = ""
    else:
        groups = _colname(outer)
        outer_label = ":".join(outer)
        for term in spec.random:
            if term.factor == outer:
                if re_formula is None and (term.correlated or len(term.effects) == 1):
                    parts = (["1"] if term.intercept else ["0"]) + list(term.slopes)
                    re_formula = " + ".join(parts)
                    re_labels = [(term.label, e) for e in term.effects]
                elif re_formula is None and not term.correlated:
                    # (1 + x || g): first effect in re_formula, the rest as components
                    first = term.effects[0]
                    re_formula = "1" if first == "(Intercept)" else f"0 + {first}"
                    re_labels = [(term.label, first)]
                    for eff in term.effects[1:]:
                        add_vc(term, eff)
                        vc_formula[list(vc_formula)[-1]] = (
                            "1" if eff == "(Intercept)" else f"0 + {eff}"
                        )
                else:
                    if term.correlated:
                        raise ValueError(
                            f"random term {term.source!r}: {term.label!r} already has a "
                            "correlated random-effects block; MixedLM allows one per factor. "
                            "Merge them into one block or write the extra one with '||'."
                        )
                    for eff in term.effects:
                        add_vc(term, eff)
                        vc_formula[list(vc_formula)[-1]] = (
                            "1" if eff == "(Intercept)" else f"0 + {eff}"
                        )
            else:
                if term.correlated:
                    other = ", ".join(
                        f"'(... | {':'.join(f)})'" for f in factors if f != term.factor
                    )
                    raise ValueError(
                        f"random term {term.source!r}: {term.label!r} is nested in "
                        f"{outer_label!r}, and MixedLM can give correlated random effects only "
                        f"to the outermost grouping factor ({outer_label!r}); inner levels are "
                        "independent variance components. Write "
                        f"'{_uncorrelated(term)}' "
                        "(uncorrelated; for a preset model, the option `slopes: uncorrelated`), or "
                        f"drop {other} so that {term.label!r} becomes the outer level."
                    )
                for eff in term.effects:
                    add_vc(term, eff)
    return MixedLMPlan(
        formula=f"{spec.response} ~ {spec.fixed}",
        groups=groups,
        re_formula=re_formula if re_formula is not None else "0",
        vc_formula=vc_formula,
        re_labels=re_labels,
        vc_labels=vc_labels,
        derived_columns=derived,
        variables=variables,
        outer=outer_label,
    )
