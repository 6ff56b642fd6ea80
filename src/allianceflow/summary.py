r"""Each research question answered in words: ``results/<study>/summary.md``.

:func:`study_summary` turns a study's fitted-model records (the JSON that
``fit_model(...).to_dict()`` writes to ``results/<study>/models/<model>.json``) and its clean
flow (``data/processed/<study>/flow.json``) into Markdown: one APA-style paragraph per
configured model, titled by its research question, then a paragraph on the data. Every number
in the text is a number of those records, rounded as APA style asks (Publication Manual,
7th ed.): no leading zero for statistics that cannot exceed 1, such as *r* and *p*; exact
*p* to three decimals, and *p* < .001 below that. Nothing is computed here that the records do
not hold, except the *r*-equivalent of a record written without one (see
:func:`r_equivalent`) and an ICC said as a percentage. A GLMM's effects are its record's odds
or rate ratios; no risk difference or NNT is stated, since the model records hold none (the
study's arm-contrast table gives them, :func:`allianceflow.effects.arm_contrasts`).

The text is Markdown that is also valid reStructuredText (setext headings, plain
paragraphs, ``-`` lists), so that Snakemake's report can include it as its front page.

Labels come from an object with ``variable(name)`` and ``term(term)`` methods (the label of
a column such as ``"ors_total"`` and of a model term such as ``"alliance_within_lag"``):
the study's :class:`allianceflow.labels.Labels`, or :class:`PlainLabels` as a fallback.

References
----------
Johnson, P. C. D. (2014). Extension of Nakagawa & Schielzeth's R²GLMM to random slopes
models. *Methods in Ecology and Evolution, 5*(9), 944–946.
Nakagawa, S., Johnson, P. C. D., & Schielzeth, H. (2017). The coefficient of determination
R² and intra-class correlation coefficient from generalized linear mixed-effects models
revisited and expanded. *Journal of the Royal Society Interface, 14*(134), 20170213.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from string import Template
from typing import Any, Protocol

__all__ = [
    "BENCHMARK",
    "Labels",
    "PlainLabels",
    "apa_number",
    "apa_p",
    "apa_r",
    "r_equivalent",
    "column_label",
    "question_of",
    "model_paragraph",
    "data_paragraph",
    "study_summary",
    "markdown_to_rst",
]

#: The meta-analytic alliance–outcome benchmark: Flückiger, Del Re, Wampold & Horvath
#: (2018), face-to-face psychotherapy, 295 studies, r = .278, 95% CI [.256, .299].
BENCHMARK: dict[str, Any] = {
    "label": "Flückiger et al. (2018)",
    "r": 0.278,
    "ci_low": 0.256,
    "ci_high": 0.299,
}

_REFERENCES = {
    "fluckiger": (
        "Flückiger, C., Del Re, A. C., Wampold, B. E., & Horvath, A. O. (2018). The alliance "
        "in adult psychotherapy: A meta-analytic synthesis. *Psychotherapy, 55*(4), 316–340. "
        "https://doi.org/10.1037/pst0000172"
    ),
    "rosenthal": (
        "Rosenthal, R. (1991). *Meta-analytic procedures for social research* (Rev. ed.). Sage."
    ),
    "kenward-roger": (
        "Kenward, M. G., & Roger, J. H. (1997). Small sample inference for fixed effects from "
        "restricted maximum likelihood. *Biometrics, 53*(3), 983–997. "
        "https://doi.org/10.2307/2533558"
    ),
    "satterthwaite": (
        "Kuznetsova, A., Brockhoff, P. B., & Christensen, R. H. B. (2017). lmerTest package: "
        "Tests in linear mixed effects models. *Journal of Statistical Software, 82*(13), "
        "1–26. https://doi.org/10.18637/jss.v082.i13"
    ),
    "containment": (
        "Pinheiro, J. C., & Bates, D. M. (2000). *Mixed-effects models in S and S-PLUS*. Springer."
    ),
    "kenny": "Kenny, D. A., Kashy, D. A., & Cook, W. L. (2006). *Dyadic data analysis*. Guilford.",
    "bartle-haring": (
        "Bartle-Haring, S., Glebova, T., Gangamma, R., Grafsky, E., & Delaney, R. O. (2012). "
        "Alliance and termination status in couple therapy: A comparison of methods for "
        "assessing discrepancies. *Psychotherapy Research, 22*(5), 502–514."
    ),
}


class Labels(Protocol):
    """What the summary needs of labels: words for a variable and for a model term."""

    def variable(self, name: str) -> str:
        """Label of a column, e.g. ``"ors_total"`` -> ``"ORS total"``."""

    def term(self, term: str) -> str:
        """Label of a model term, e.g. ``"alliance_within_lag"`` in words."""


class PlainLabels:
    """Fallback labels: instrument ids in capitals, terms as written, given names first.

    Parameters
    ----------
    names : mapping, optional
        Column or term -> label, consulted first.

    Examples
    --------
    >>> labels = PlainLabels()
    >>> labels.variable("wai_sr_total"), labels.variable("phq9_total")
    ('WAI-SR total', 'PHQ9 total')
    >>> labels.term("alliance_within_lag")
    'alliance within lag'
    """

    def __init__(self, names: Mapping[str, str] | None = None) -> None:
        self.names = dict(names or {})

    def variable(self, name: str) -> str:
        """Label of a column: ``<instrument>_total`` -> "<INSTRUMENT> total"."""
        if name in self.names:
            return self.names[name]
        ident, _, part = name.rpartition("_")
        if ident and part:
            return f"{ident.upper().replace('_', '-')} {part}"
        return name.replace("_", " ")

    def term(self, term: str) -> str:
        """Label of a model term: the term with underscores as spaces."""
        if term in self.names:
            return self.names[term]
        return term.replace("_", " ")


def _lower(text: str) -> str:
    """Lower the first letter inside a sentence, unless it starts an abbreviation."""
    if len(text) > 1 and (text[1].isupper() or text[1].isdigit()):
        return text
    return text[:1].lower() + text[1:]


_ITEM = re.compile(r"^(?P<instrument>[a-z][a-z0-9_]*?)_(?P<item>\d+)$")


def column_label(labels: Labels, column: str) -> str:
    """Label of a column of the session table; an item column reads "<instrument> item N".

    Examples
    --------
    >>> from allianceflow.labels import Labels
    >>> labels = Labels(instruments={"ors": "ORS"})
    >>> column_label(labels, "ors_3"), column_label(PlainLabels(), "ors_total")
    ('ORS item 3', 'ORS total')
    """
    item = _ITEM.match(column)
    instruments = getattr(labels, "instruments", {}) or {}
    if item and item["instrument"] in instruments:
        return f"{instruments[item['instrument']]} item {item['item']}"
    return labels.variable(column)


# --------------------------------------------------------------------------- APA numbers


def apa_number(value: float, decimals: int = 2) -> str:
    """Format a number with *decimals* decimals, thousands separated, never "-0.00".

    Examples
    --------
    >>> apa_number(-0.001), apa_number(2510, 0), apa_number(0.1649)
    ('0.00', '2,510', '0.16')
    """
    text = f"{value:,.{decimals}f}"
    if re.fullmatch(r"-[0.,]+", text):
        text = text[1:]
    return text


def _no_leading_zero(text: str) -> str:
    return re.sub(r"^(-?)0\.", r"\1.", text)


def apa_r(value: float) -> str:
    """Format a correlation as APA does: two decimals, no leading zero.

    Examples
    --------
    >>> apa_r(0.1649), apa_r(-0.2463), apa_r(0.278)
    ('.16', '-.25', '.28')
    """
    return _no_leading_zero(apa_number(value, 2))


def apa_p(p: float | None) -> str:
    """Format a p value as APA does: "p = .034", "p < .001", no leading zero.

    Examples
    --------
    >>> apa_p(0.0341), apa_p(3e-17), apa_p(0.5)
    ('p = .034', 'p < .001', 'p = .500')
    """
    if p is None or not math.isfinite(p):
        return "p not available"
    if p < 0.001:
        return "p < .001"
    return f"p = {_no_leading_zero(f'{p:.3f}')}"


def _decimals(*values: float) -> int:
    """Decimals that show the largest of *values* to two significant digits (2 to 4)."""
    largest = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=1.0)
    for decimals in (2, 3, 4):
        if largest >= 10 ** (1 - decimals):
            return decimals
    return 4


def _df(df: float) -> str:
    """Degrees of freedom: whole numbers as such, others to one decimal."""
    return apa_number(df, 0) if float(df).is_integer() else apa_number(df, 1)


def r_equivalent(statistic: float, df: float) -> float:
    r"""The *r*-equivalent of a test statistic on *df* degrees of freedom.

    .. math:: r = \frac{t}{\sqrt{t^2 + df}}

    (Rosenthal, 1991, eq. 2.16), with *z* in place of *t* for a Wald *z* test; the sign is
    that of the statistic. The model records already hold it (their ``r`` column, computed
    the same way by :func:`allianceflow.models.inference.wald_rows`); the summary computes it
    only for a record written without one.

    References
    ----------
    Rosenthal, R. (1991). *Meta-analytic procedures for social research* (Rev. ed.). Sage.

    Examples
    --------
    >>> round(r_equivalent(2.0, 96.0), 6)
    0.2
    """
    if df <= 0 or not math.isfinite(statistic):
        raise ValueError(
            f"`df` must be positive and `statistic` finite; got df={df!r}, statistic={statistic!r}."
        )
    return statistic / math.sqrt(statistic * statistic + df)


# --------------------------------------------------------------------------- questions


def question_of(record: Mapping[str, Any], labels: Labels | None = None) -> str:
    """The research question a model answers, in words: :meth:`allianceflow.labels.Labels.question`.

    One wording of a model's question serves the summary's headings, the forest plots'
    titles and the model tables' titles; *labels* without a ``question`` method (such as
    :class:`PlainLabels`) fall back to the default :class:`allianceflow.labels.Labels`.

    Examples
    --------
    >>> question_of({"formula": "outcome ~ session + (1 | patient)",
    ...              "fixed": [{"term": "Intercept"}, {"term": "session"}]})
    'Change in outcome over sessions (random intercepts for patients)'
    """
    from .labels import Labels as _Labels

    words = labels if hasattr(labels, "question") else _Labels()
    return words.question(record)


def _response(record: Mapping[str, Any]) -> str:
    """The response (left-hand side) of a record's formula, or "outcome"."""
    return str(record.get("formula", "")).split("~")[0].strip() or "outcome"


def _couple_question(record: Mapping[str, Any], terms: set[str]) -> str | None:
    """Which couples preset a record answers (the preset's name), or None.

    Read from its terms and response: the partner's alliance (actor–partner model), the
    split with the system's mean (split model), the split as the response (its trajectory)
    and the early split (termination).
    """
    parts = {part for term in terms for part in term.split(":")}
    if any(p.startswith("alliance_partner_") for p in parts):
        roles = any(p.startswith("role_") for p in parts)
        return "couple_alliance_outcome_roles" if roles else "couple_alliance_outcome"
    if any(p.startswith("alliance_split_") for p in parts):
        return "split_alliance"
    if _response(record) == "alliance_split":
        return "split_trajectory"
    if "early_alliance_split" in parts:
        return "split_dropout"
    return None


def _is_alliance_outcome(record: Mapping[str, Any]) -> bool:
    """Whether the model estimates an alliance–outcome association (benchmark applies)."""
    return any(
        row["term"].startswith("alliance_") and ":" not in row["term"] for row in record["fixed"]
    )


# --------------------------------------------------------------------------- sentences

# $person and $people: the study's word for the people rated (Labels.person): "patient"
# or, in couple and family therapy, "client"
_WITHIN = Template(
    "a session whose $predictor was 1 point above the $person's usual level was followed "
    "at the next session by $outcome_article $outcome $amount $direction"
)
_DETRENDED = Template(
    "a session whose $predictor was 1 point above the $person's own trend was followed at "
    "the next session by $outcome_article $outcome $amount $direction"
)
_BETWEEN = Template(
    "$people whose mean $predictor was 1 point higher than another $person's had "
    "$outcome_article $outcome $amount $direction on average"
)
_THERAPIST = Template(
    "$people of a therapist whose $people' mean $predictor was 1 point higher had "
    "$outcome_article $outcome $amount $direction"
)
_DEVIATION = Template(
    "$people whose mean $predictor was 1 point above their therapist's mean had "
    "$outcome_article $outcome $amount $direction"
)
_OFF_TRACK = Template(
    "$people flagged not on track at any session had $outcome_article $outcome $amount $direction"
)
_SESSION = Template("with each further session, the $outcome was $amount $direction")
_COUNT = Template(
    "each further $predictor at the $person's earlier sessions went with $outcome_article "
    "$outcome $amount $direction"
)
_GENERIC = Template(
    "$predictor one unit higher went with $outcome_article $outcome $amount $direction"
)
_CONTRAST = Template("for $predictor, the $outcome was $amount $direction")


_PARTNER_WITHIN = Template(
    "a session at which the $other's $predictor was 1 point above the $other's usual level "
    "was followed at the next session by $outcome_article $outcome $amount $direction for the "
    "client"
)
_PARTNER_BETWEEN = Template(
    "clients whose $other's mean $predictor was 1 point higher had $outcome_article $outcome "
    "$amount $direction on average"
)
_SYSTEM_WITHIN = Template(
    "a session at which the $unit's mean $predictor was 1 point above the $unit's usual level "
    "was followed at the next session by $outcome_article $outcome $amount $direction for each "
    "member"
)
_SYSTEM_BETWEEN = Template(
    "$units whose mean $predictor was 1 point higher than another $unit's had "
    "$outcome_article $outcome $amount $direction on average"
)
_SPLIT_WITHIN = Template(
    "a session at which the $members' $predictor scores were 1 point further apart$spread than "
    "usual for the $unit was followed at the next session by $outcome_article $outcome $amount "
    "$direction"
)
_SPLIT_BETWEEN = Template(
    "$units whose $members' $predictor scores were on average 1 point further apart$spread than "
    "another $unit's had $outcome_article $outcome $amount $direction on average"
)


def _person_words(labels: Any) -> dict[str, str]:
    """The study's word for the people rated and its plural (``Labels.person``).

    "patient" and "patients", or "client" and "clients" for a study of couples or families;
    labels without a ``person`` (:class:`PlainLabels`) say "patient".
    """
    person = getattr(labels, "person", "patient")
    return {"person": person, "people": f"{person}s"}


def _system_words(labels: Labels) -> dict[str, str]:
    """What a system is in *labels* (couple, family, couple or family) and its members."""
    unit = getattr(labels, "system_word", lambda: "couple or family")()
    units = {"family": "families", "couple or family": "couples or families"}.get(unit)
    return {
        "unit": unit,
        "units": units or f"{unit}s",
        "members": "partners" if unit == "couple" else "members",
        "other": "partner" if unit != "family" else "other members",
        "spread": " (in SD)" if unit == "family" else "",
    }


def _couple_sentence(term: str, values: Mapping[str, str], labels: Labels, alliance: str):
    """The effect of one term of a couples preset in words, or None for other terms."""
    words = {**_system_words(labels), **values, "predictor": labels.variable(alliance)}
    templates = {
        "alliance_partner_within_lag": _PARTNER_WITHIN,
        "alliance_partner_between": _PARTNER_BETWEEN,
        "alliance_system_mean_within_lag": _SYSTEM_WITHIN,
        "alliance_system_mean_between": _SYSTEM_BETWEEN,
        "alliance_split_within_lag": _SPLIT_WITHIN,
        "alliance_split_between": _SPLIT_BETWEEN,
    }
    if term in templates:
        return templates[term].substitute(words)
    if re.fullmatch(r"role_\w+", term):  # a role's difference from the reference role
        return _CONTRAST.substitute(values, predictor=_lower(labels.term(term)))
    return None


def _odds_sentence(row: Mapping[str, Any], labels: Labels) -> str:
    """A binomial GLMM's coefficient in words, as an odds ratio per unit of its predictor."""
    odds = math.exp(row["estimate"])
    low, high = math.exp(row["ci_low"]), math.exp(row["ci_high"])
    what = _lower(labels.variable(row["term"]))
    response = _lower(labels.variable("dropout"))
    return (
        f"one point more in the {what}{',' if ',' in what else ''} multiplied the odds of "
        f"{_article(response)} {response} by {apa_number(odds, 2)} (odds ratio, 95% CI "
        f"[{apa_number(low, 2)}, {apa_number(high, 2)}])"
    )


def _article(noun: str) -> str:
    """Choose "an" before a vowel sound: a vowel, or an initialism such as ORS or SRS."""
    initialism = noun[:2].isupper()
    return "an" if noun[:1].upper() in ("AEFHILMNORSX" if initialism else "AEIOU") else "a"


def _term_sentence(
    term: str,
    *,
    labels: Labels,
    alliance: str,
    outcome: str,
    amount: str,
    direction: str,
) -> str:
    """The effect of one term in words, in the instruments' units."""
    out = labels.variable(outcome)
    values = {
        "outcome": out,
        "outcome_article": _article(out),
        "amount": amount,
        "direction": direction,
        **_person_words(labels),
    }
    prefix = alliance.rsplit("_", 1)[0]
    couple = _couple_sentence(term, values, labels, alliance)
    if couple is not None:
        return couple
    component = re.fullmatch(r"alliance_(\w+?)_(within_lag|between)", term)
    if term == "alliance_within_lag":
        return _WITHIN.substitute(values, predictor=labels.variable(alliance))
    if term == "alliance_within_detrended_lag":
        return _DETRENDED.substitute(values, predictor=labels.variable(alliance))
    if term == "alliance_between":
        return _BETWEEN.substitute(values, predictor=labels.variable(alliance))
    if term == "alliance_therapist_mean":
        return _THERAPIST.substitute(values, predictor=labels.variable(alliance))
    if term == "alliance_patient_deviation":
        return _DEVIATION.substitute(values, predictor=labels.variable(alliance))
    if component and not component[1].startswith("rater_"):
        predictor = labels.variable(f"{prefix}_{component[1]}")
        template = _WITHIN if component[2] == "within_lag" else _BETWEEN
        return template.substitute(values, predictor=predictor)
    if term == "session":
        return _SESSION.substitute(values)
    if term == "off_track":
        return _OFF_TRACK.substitute(values)
    if term in ("ruptures_before", "repairs_before"):
        noun = "detected rupture" if term == "ruptures_before" else "repaired rupture"
        return _COUNT.substitute(values, predictor=noun)
    if ":" in term or "[" in term:
        # interactions and contrasts of a categorical variable (e.g. arm) have no unit
        return _CONTRAST.substitute(values, predictor=_lower(labels.term(term)))
    return _GENERIC.substitute(values, predictor=labels.term(term))


def _direction(estimate: float, outcome_direction: str | None) -> str:
    higher = estimate > 0
    word = "higher" if higher else "lower"
    if outcome_direction == "higher_is_better":
        return f"{word} ({'better' if higher else 'worse'})"
    if outcome_direction == "lower_is_better":
        return f"{word} ({'worse' if higher else 'better'})"
    return word


def _statistics(row: Mapping[str, Any], ddf: str) -> str:
    """Give the statistics of one fixed effect in APA style.

    E.g. "(*b* = 0.16, 95% CI [0.12, 0.20], *t*(2510.4) = 8.03, *p* < .001, *r* = .16)".
    """
    est, low, high = row["estimate"], row["ci_low"], row["ci_high"]
    decimals = _decimals(est, low, high)
    r = row.get("r")
    if r is None and row.get("statistic") is not None and row.get("df"):
        r = r_equivalent(row["statistic"], row["df"])
    parts = [
        f"*b* = {apa_number(est, decimals)}",
        f"95% CI [{apa_number(low, decimals)}, {apa_number(high, decimals)}]",
    ]
    if row.get("statistic") is not None:
        if ddf == "containment":
            parts.append(f"*z* = {apa_number(row['statistic'], 2)}")
        else:
            parts.append(f"*t*({_df(row['df'])}) = {apa_number(row['statistic'], 2)}")
    parts.append(f"*{apa_p(row.get('p'))[0]}*{apa_p(row.get('p'))[1:]}")
    if r is not None:
        parts.append(f"*r* = {apa_r(r)}")
    return "(" + ", ".join(parts) + ")"


_UNITS = {"patient": "patients", "therapist": "therapists", "system": "couples or families"}


def _units(labels: Any) -> dict[str, str]:
    """The grouping factors' plurals, the patients' in the study's word (:func:`_person_words`)."""
    return {**_UNITS, "patient": _person_words(labels)["people"]}


#: How a session lacking a model variable is said (``{label}``: the variable's label).
_DROP_REASONS = {
    "alliance_within_lag": "had no {label}, as at every {person}'s first session",
    "alliance_within_detrended_lag": "had no {label}, as at every {person}'s first session",
    "outcome": "had no {label}, too many of its items being blank or coded missing",
    "alliance_between": "had no {label}: the {person} has no alliance score at any session",
    "off_track": "had no on-track status, the {person}'s never having been assessed",
    "deteriorated": "had no reliable-change status, having fewer than two outcome scores",
    "improved": "had no reliable-change status, having fewer than two outcome scores",
    "dropout": "had no known kind of ending (still in treatment, or not recorded)",
    "early_alliance": "had no alliance score in the first sessions",
    "outcome_baseline": "had no outcome score",
    "feedback": "had no arm",
}


def _sample_sentence(record: Mapping[str, Any], labels: Labels, rows: str | None = None) -> str:
    """The N of a model and the rows left out; *rows* names its rows (default: by the model)."""
    # patients first, then the other units in formula order
    order = sorted(record["n_groups"], key=lambda g: g != "patient")
    groups = [
        f"{apa_number(record['n_groups'][g], 0)} "
        + _units(labels).get(g, _lower(labels.variable(g)) + " units")
        for g in order
    ]
    # a patient-level model (the binary and count presets) has one row per patient
    people = _person_words(labels)["people"]
    if rows is None:
        patient_level = _is_glmm(record) and "patient" not in record["n_groups"]
        rows = people if patient_level else "sessions"
    if rows == people:
        text = f"The model used {apa_number(record['n_obs'], 0)} {people}"
        text += (" of " + _join(groups) if groups else "") + "."
    else:
        text = f"The model used {apa_number(record['n_obs'], 0)} sessions of " + _join(groups)
        text += "."
    dropped = record.get("n_dropped_missing", 0)
    if dropped:
        by_variable = record.get("dropped_missing_by_variable") or {}
        reasons = [
            f"{apa_number(n, 0)} "
            + _DROP_REASONS.get(v, "had no {label}").format(
                label=_lower(labels.variable(v)), **_person_words(labels)
            )
            for v, n in by_variable.items()
            if n
        ]
        text += (
            f" {apa_number(dropped, 0)} {rows} were left out because a model variable was "
            "missing"
            + (": " + "; ".join(reasons) if reasons else "")
            + "."
            + (
                f" A {_singular(rows)} missing several variables is counted under each."
                if len(reasons) > 1
                else ""
            )
        )
    else:
        text += f" No {_singular(rows)} was left out for missing values."
    return text


def _singular(rows: str) -> str:
    """The singular of a plural of rows: "sessions", "families", "couples or families".

    Examples
    --------
    >>> [_singular(r) for r in ("sessions", "families", "couples or families", "clients")]
    ['session', 'family', 'couple or family', 'client']
    """
    if " or " in rows:
        return " or ".join(_singular(part) for part in rows.split(" or "))
    return rows[:-3] + "y" if rows.endswith("ies") else rows[:-1]


#: The actor terms of the actor–partner model (the client's own alliance).
_ACTOR_TERMS = ("alliance_within_lag", "alliance_between")
#: The partner terms of the actor–partner model (the other member's alliance).
_PARTNER_TERMS = ("alliance_partner_within_lag", "alliance_partner_between")


def _couple_sample_sentence(record: Mapping[str, Any], labels: Labels) -> str:
    """The N of a couples model: sessions, clients, couples (families) and therapists.

    A model of one row per system (``split_dropout``) counts systems; one of one row per
    system and session (``split_trajectory``) counts the systems' sessions.
    """
    words = _system_words(labels)
    units = {"patient": "clients", "system": words["units"], "therapist": "therapists"}
    groups = record["n_groups"]
    order = [g for g in ("patient", "system", "therapist") if g in groups]
    order += [g for g in groups if g not in order]
    counted = [
        f"{apa_number(groups[g], 0)} {units.get(g, _lower(labels.variable(g)) + ' units')}"
        for g in order
    ]
    if "patient" not in groups and "system" not in groups:  # one row per system
        what = words["units"]
        text = f"The model used {apa_number(record['n_obs'], 0)} {what}"
        text += (f" of {_join(counted)}" if counted else "") + "."
    else:
        what = "sessions" if "patient" in groups else f"{words['unit']} sessions"
        text = f"The model used {apa_number(record['n_obs'], 0)} {what} of {_join(counted)}."
    # what was left out for missing values, as for any model (the first sentence replaced)
    rest = _sample_sentence(record, labels, rows=what).split(". ", 1)
    return text + (" " + rest[1] if len(rest) > 1 else "")


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _warning_sentence(record: Mapping[str, Any], labels: Labels) -> str:
    conv = record.get("convergence") or {}
    notes = []
    if not conv.get("converged", True):
        notes.append(
            "**The fit did not converge**: read its estimates as unreliable and see the "
            "model's text output."
        )
    boundary = [row for row in record.get("random", []) if row.get("boundary")]
    for row in boundary:
        what = (
            "intercept"
            if row["term"] == "(Intercept)"
            else f"slope of {_lower(labels.variable(row['term']))}"
        )
        group = _lower(labels.variable(row["group"]))
        notes.append(
            f"The variance of the {group} {what} is at the boundary (near zero, a singular "
            "fit): the data cannot tell it from none."
        )
    for warning in conv.get("warnings", []):
        notes.append(f"Warning: {warning[:1].upper()}{warning[1:].rstrip('.')}.")
    if not notes:
        return "The fit converged without warnings."
    return " ".join(notes)


def _benchmark_sentence(benchmark: Mapping[str, Any], outcome_direction: str | None) -> str:
    sign = ""
    if outcome_direction == "lower_is_better":
        sign = (
            " Lower outcome scores are better here, so a negative *r* is in the benchmark's "
            "direction."
        )
    r, low, high = (
        _no_leading_zero(f"{float(benchmark[key]):.3f}") for key in ("r", "ci_low", "ci_high")
    )
    return (
        "For comparison, the meta-analytic alliance–outcome correlation is "
        f"*r* = {r}, 95% CI [{low}, {high}], in {benchmark['label']}; it pools correlations "
        "of the alliance with later outcome, "
        "mostly between patients, so a within-patient session-to-session effect is expected "
        f"to be smaller.{sign}"
    )


# --------------------------------------------------------------------------- GLMMs

#: The ratio of a GLMM family's exponentiated coefficients, its abbreviation and the scale.
_RATIOS = {
    "binomial": ("odds", "OR", "log-odds"),
    "poisson": ("rate", "IRR", "log-rate"),
}
#: Outcomes of the binary presets whose direction is clear: is a higher rate better?
_BINARY_BETTER = {"deteriorated": False, "improved": True}


def _response(record: Mapping[str, Any]) -> str:
    """The model's response column, from its formula ("outcome" when it has none)."""
    return str(record.get("formula", "")).split("~")[0].strip() or "outcome"


def _is_glmm(record: Mapping[str, Any]) -> bool:
    return record.get("family") in _RATIOS


def _arm_words(labels: Labels) -> tuple[str, str]:
    """The feedback arm and the arm(s) it is compared with, in words."""
    arm = getattr(labels, "arm", lambda level: str(level).replace("_", " "))
    levels = [str(v) for v in (getattr(labels, "levels", {}) or {}).get("condition", ())]
    others = [v for v in levels if v != "feedback"]
    other = arm(others[0]) if len(others) == 1 else "the other arms"
    return arm("feedback"), other


def _glmm_phrase(part: str, labels: Labels) -> str:
    """A term of a patient-level GLMM as it reads inside a sentence."""
    if part == "feedback":
        return f"the {_arm_words(labels)[0]} arm"
    if part == "off_track":
        return "patients not on track"
    if part == "early_alliance":
        return f"early {_lower(labels.variable('alliance'))} (mean of the first sessions)"
    return _lower(labels.term(part))


def _ratio_sentence(row: Mapping[str, Any], record: Mapping[str, Any], labels: Labels) -> str:
    """One GLMM fixed effect in words: who had higher or lower odds (rate) of what."""
    noun, _, _ = _RATIOS[record["family"]]
    response = _response(record)
    outcome = _lower(labels.variable(response))
    up = row["estimate"] > 0
    better = _BINARY_BETTER.get(response)
    judged = "" if better is None else (" (better)" if up == better else " (worse)")
    if record["family"] == "poisson":
        more = f"{'more' if up else 'fewer'} {outcome}"
    else:
        more = f"{'higher' if up else 'lower'} odds of {outcome}{judged}"
    term = row["term"]
    if ":" in term:
        first, *rest = term.split(":")
        others = " and ".join(_glmm_phrase(p, labels) for p in rest)
        return (
            f"the {noun} ratio of {_glmm_phrase(first, labels)} was "
            f"{'larger' if up else 'smaller'} for {others}, by the ratio of {noun} ratios"
        )
    if term == "feedback":
        treated, other = _arm_words(labels)
        return f"patients in the {treated} arm had {more} than patients in {other}"
    if term == "off_track":
        return f"patients not on track had {more} than patients on track"
    return f"each 1 point higher {_glmm_phrase(term, labels)} went with {more}"


def _ratio_statistics(row: Mapping[str, Any], ratio: Mapping[str, Any], family: str) -> str:
    """E.g. "(OR = 0.55, 95% CI [0.30, 1.01], *b* = −0.60, *z* = −1.92, *p* = .055)".

    The ratio and its interval are the record's ``ratios`` row (e^b and the exponentiated
    Wald interval of b); decimals follow b, so that a ratio near 1 keeps its digits.
    """
    _, abbreviation, _ = _RATIOS[family]
    decimals = _decimals(row["estimate"], row["ci_low"], row["ci_high"])
    parts = [
        f"{abbreviation} = {apa_number(ratio['ratio'], decimals)}",
        f"95% CI [{apa_number(ratio['ci_low'], decimals)}, "
        f"{apa_number(ratio['ci_high'], decimals)}]",
        f"*b* = {apa_number(row['estimate'], decimals)}",
    ]
    if row.get("statistic") is not None:
        parts.append(f"*z* = {apa_number(row['statistic'], 2)}")
    parts.append(f"*{apa_p(row.get('p'))[0]}*{apa_p(row.get('p'))[1:]}")
    return "(" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------- variance


def _icc_sentence(record: Mapping[str, Any], labels: Labels) -> str:
    r"""Where the variance lay: each grouping factor's ICC of the record, in words.

    The record's ICC of level *l* is :math:`\sigma^2_l / (\sum_k \sigma^2_k + \sigma^2_e)`
    (:func:`allianceflow.models.inference.variance_explained`): the share of the variance
    the fixed effects leave unexplained, the adjusted ICC of Nakagawa, Johnson and
    Schielzeth (2017). With random slopes :math:`\sigma^2_l` is averaged over the rows
    (Johnson, 2014); a GLMM's ICC is on the latent scale (residual :math:`\pi^2/3` for the
    logit link). No interval is stated: the records hold none.
    """
    icc = record.get("icc") or {}
    if not icc:
        return ""
    slopes = {row["group"] for row in record.get("random", []) if row.get("term") != "(Intercept)"}
    parts = []
    for group, value in icc.items():
        if value is None:
            continue
        who = _units(labels).get(group, _lower(labels.variable(group)) + " units")
        lay = "" if parts else "lay "
        text = f"{apa_number(100 * value, 0)}% {lay}between {who} (ICC = {apa_r(value)})"
        if group in slopes:
            text += ", random slopes included and averaged over the rows"
        parts.append(text)
    if not parts:
        return ""
    what = _lower(labels.variable(_response(record)))
    what = what if _is_glmm(record) else f"the {what}"
    if _is_glmm(record):
        _, _, scale = _RATIOS[record["family"]]
        what = f"{what} (on the latent {scale} scale)"
    return f"Of the variance in {what} that the fixed effects leave unexplained, {_join(parts)}."


_PARAGRAPH = Template("$title\n$underline\n\n$body\n")


def _heading(title: str, char: str) -> str:
    return f"{title}\n{char * len(title)}\n"


def model_paragraph(
    record: Mapping[str, Any],
    *,
    labels: Labels | None = None,
    alliance: str,
    outcome: str,
    outcome_direction: str | None = None,
    question: str | None = None,
    benchmark: Mapping[str, Any] | None = BENCHMARK,
) -> str:
    """One research question answered in words: heading and APA-style paragraph.

    Parameters
    ----------
    record : dict
        A model record (``MixedModelResult.to_dict()``, a model's JSON).
    labels : Labels, optional
        Words for variables and terms (default :class:`PlainLabels`).
    alliance, outcome : str
        The study's alliance and outcome score columns (``measures.alliance`` and
        ``measures.outcome``), e.g. ``"wai_sr_total"`` and ``"ors_total"``: the units of
        the effects.
    outcome_direction : {"higher_is_better", "lower_is_better"}, optional
        The outcome instrument's direction of improvement, said after each effect.
    question : str, optional
        The title; default :func:`question_of`.
    benchmark : dict or None
        ``label, r, ci_low, ci_high`` of the meta-analytic benchmark quoted for models of
        the alliance–outcome association (default :data:`BENCHMARK`); None leaves it out.

    Returns
    -------
    str
        Markdown (also valid reStructuredText): a level-2 setext heading (the model's
        question, :func:`question_of`), then the paragraph: each fixed effect other than
        the intercept in words with *b*, its 95% CI, the test (*t* on the record's df, or
        Wald *z*), *p* and the *r*-equivalent; for a binomial or Poisson GLMM, the odds or
        rate ratio of the record's ``ratios`` with its 95% CI, *b*, Wald *z* and *p*
        instead (no *r*-equivalent); the numbers of sessions (or, for a patient-level
        model, patients) and units; the rows left out and why; the share of the
        unexplained variance at each level (the record's ICCs); convergence and boundary
        warnings; and, where it applies, the benchmark.
    """
    labels = labels or PlainLabels()
    ddf = record.get("ddf", "containment")
    sentences = []
    interacting = {part for row in record["fixed"] for part in row["term"].split(":")[1:]}
    interacting |= {row["term"].split(":")[0] for row in record["fixed"] if ":" in row["term"]}
    ratios = {r["term"]: r for r in record.get("ratios") or []}
    couple = _couple_question(record, {row["term"] for row in record["fixed"]})
    if couple == "split_trajectory":  # the split itself is the response, in alliance points
        outcome, outcome_direction = "alliance_split", None
    for row in record["fixed"]:
        if row["term"] == "Intercept":
            continue
        split_odds = couple == "split_dropout" and record.get("family") == "binomial"
        if _is_glmm(record) and row["term"] in ratios and not split_odds:
            text = _ratio_sentence(row, record, labels)
            if row["term"] in interacting:
                text += ", where the terms it interacts with are zero or at their reference level"
            stats = _ratio_statistics(row, ratios[row["term"]], record["family"])
            sentences.append(f"{text[:1].upper()}{text[1:]} {stats}.")
            continue
        decimals = _decimals(row["estimate"], row["ci_low"], row["ci_high"])
        amount = apa_number(abs(row["estimate"]), decimals) + " points"
        text = _term_sentence(
            row["term"],
            labels=labels,
            alliance=alliance,
            outcome=outcome,
            amount=amount,
            direction=_direction(row["estimate"], outcome_direction),
        )
        if split_odds:  # the couples' own wording of the early split's odds ratio
            text = _odds_sentence(row, labels)
        elif couple == "split_trajectory" and row["term"] == "session":
            split = _lower(labels.variable("alliance_split"))
            direction = _direction(row["estimate"], None)
            text = f"with each further session, the {split} was {amount} {direction}"
        elif (couple or "").startswith("couple_alliance_outcome") and row["term"] in _ACTOR_TERMS:
            text = f"actor effect: {text}"
        elif (couple or "").startswith("couple_alliance_outcome") and row["term"] in _PARTNER_TERMS:
            text = f"partner effect: {text}"
        if row["term"] in interacting:
            # a main effect in a model with its interactions is conditional
            text += ", where the terms it interacts with are zero or at their reference level"
        sentences.append(f"{text[:1].upper()}{text[1:]} {_statistics(row, ddf)}.")
    body = [
        " ".join(sentences),
        _couple_sample_sentence(record, labels) if couple else _sample_sentence(record, labels),
        _icc_sentence(record, labels),
        _warning_sentence(record, labels),
    ]
    # the benchmark pools individual therapy: not quoted for the couples presets
    if benchmark is not None and _is_alliance_outcome(record) and not couple:
        body.append(_benchmark_sentence(benchmark, outcome_direction))
    title = f"{question or question_of(record, labels)} (model {record['name']})"
    return _PARAGRAPH.substitute(
        title=title, underline="-" * len(title), body=" ".join(b for b in body if b)
    )


#: Each clean rule in words (the rules are listed in :mod:`allianceflow.clean`).
RULE_WORDS = {
    "id_variant": "another spelling of an id",
    "missing_id": "no patient id or session number",
    "label_variant": "another spelling of an arm or other label",
    "not_a_number": "text where a number belongs",
    "ending_invalid": "an unknown kind of ending",
    "ending_conflict": "conflicting patient-level values",
    "session_invalid": "an invalid session number",
    "date_invalid": "an invalid date",
    "after_extraction": "a session after the data extraction",
    "duplicate_identical": "an identical copy of another row",
    "duplicate_conflicting": "conflicting copies of one session",
    "out_of_range": "an answer outside the instrument's range",
    "session_order": "dated out of session order",
    "session_gap": "sessions missing before it",
    "therapist_change": "a change of therapist",
    "min_sessions": "too few sessions",
    "missing_therapist": "no therapist",
    "condition_change": "a change of arm",
    "system_change": "a client in more than one couple or family",
    "system_therapist": "a couple or family seen by more than one therapist",
    "role_change": "a change of a client's role",
    "system_roles": "two members in one role, a blank role, or other roles than the others'",
    "system_sessions": "a session no other member of the couple or family attended",
    "system_size": "a couple or family of one member",
}


def _by_rule(counts: Mapping[str, int]) -> str:
    """``{"session_gap": 3}`` → ``"sessions missing before it: 3"``."""
    return "; ".join(
        f"{RULE_WORDS.get(rule, rule.replace('_', ' '))}: {apa_number(n, 0)}"
        for rule, n in counts.items()
    )


def data_paragraph(flow: Mapping[str, Any], *, labels: Labels | None = None) -> str:
    """The "Data" paragraph: rows and patients read, kept and excluded, missing values.

    Parameters
    ----------
    flow : dict
        The study's ``flow.json`` (:func:`allianceflow.clean.clean_sessions`).
    labels : Labels, optional
        Words for columns (default :class:`PlainLabels`).

    Returns
    -------
    str
        Markdown: a level-2 heading "Data"; the sessions (rows) and patients read, kept
        and excluded with the count per rule; rows flagged or altered but kept, per rule;
        the columns with missing values among the kept rows; and the clean stage's
        warnings, word for word, as a list.
    """
    labels = labels or PlainLabels()
    s, p = flow["sessions"], flow["patients"]
    people = _person_words(labels)["people"]
    text = (
        f"The export held {apa_number(s['read'], 0)} session rows of "
        f"{apa_number(p['read'], 0)} {people}; {apa_number(s['kept'], 0)} rows of "
        f"{apa_number(p['kept'], 0)} {people} were kept and {apa_number(s['excluded'], 0)} "
        "rows excluded"
    )
    excluded = s.get("excluded_by_rule") or {}
    text += f" ({_by_rule(excluded)})." if excluded else "."
    for action in ("flagged", "altered"):
        counts = s.get(f"{action}_by_rule") or {}
        if counts:
            text += f" Rows {action} but kept, by reason: {_by_rule(counts)}."
    if p.get("excluded"):
        text += (
            f" {people.capitalize()} excluded, by reason: "
            f"{_by_rule(p.get('excluded_by_rule') or {})}."
        )
    by_column = (flow.get("values") or {}).get("missing_by_column") or {}
    missing = {
        col: by_column[col]["kept_missing"]
        for col in sorted(by_column, key=_natural)
        if by_column[col].get("kept_missing")
    }
    if missing:
        listed = "; ".join(
            f"{column_label(labels, c)}: {apa_number(n, 0)}" for c, n in missing.items()
        )
        text += f" Values missing among the kept rows, by column: {listed}."
    else:
        text += " No value is missing among the kept rows."
    text += " Every excluded, altered or flagged row is listed in exclusions.csv."
    if flow.get("systems"):
        text += " " + _systems_sentence(flow["systems"], labels)
    warnings = flow.get("warnings") or []
    if warnings:
        text += "\n\nWarnings from cleaning:\n\n" + "\n".join(f"- {w}" for w in warnings)
    return _heading("Data", "-") + "\n" + text + "\n"


def _systems_sentence(systems: Mapping[str, Any], labels: Labels) -> str:
    """The couples (families) of a study's ``flow.json``: read, kept, sizes, roles."""
    words = _system_words(labels)
    text = (
        f"The export held {apa_number(systems['read'], 0)} {words['units']}, of which "
        f"{apa_number(systems['kept'], 0)} were kept"
    )
    sizes = systems.get("members") or {}
    if sizes:
        text += (
            " ("
            + _join([f"{apa_number(n, 0)} of {size} members" for size, n in sorted(sizes.items())])
            + ")"
        )
    text += "."
    roles = [
        getattr(labels, "role", lambda r: r.replace("_", " "))(r)
        for r in systems.get("roles") or ()
    ]
    if systems.get("distinguishable") and roles:
        each = _join([f"one {r}" for r in roles])
        text += (
            f" The {words['members']} are distinguishable by role: every {words['unit']} "
            f"has {each}."
        )
    elif systems.get("distinguishable") is False:
        text += f" The {words['members']} are not distinguishable by role."
    shared = systems.get("sessions_shared")
    if shared is not None:
        text += (
            f" {apa_number(100 * shared, 1)}% of sessions were attended by every member of the "
            f"{words['unit']}."
        )
    return text


_RST_END = set(" \n\t-.,:;!?\\/'\")]}>")
_RST_START = set(" \n\t-:/'\"<([{")


def markdown_to_rst(text: str) -> str:
    r"""Make the summary's Markdown read the same as reStructuredText.

    The summary uses only what the two share (setext headings, paragraphs, ``-`` lists,
    ``*emphasis*`` and ``**strong**``), except that reStructuredText wants inline markup
    next to whitespace or punctuation: ``*t*(12)`` and ``*t*²`` get an escaped space
    (``*t*\ (12)``), which renders as nothing.

    Examples
    --------
    >>> markdown_to_rst("*t*(12) = 2.0, *t*² and *b* = 1")
    '*t*\\ (12) = 2.0, *t*\\ ² and *b* = 1'
    """
    out = []
    pos = 0
    for match in re.finditer(r"(\*{1,2})[^*\s][^*]*?\1", text):
        start, end = match.span()
        out.append(text[pos:start])
        if start > 0 and text[start - 1] not in _RST_START:
            out.append("\\ ")
        out.append(match[0])
        if end < len(text) and text[end] not in _RST_END:
            out.append("\\ ")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _natural(name: str) -> list:
    """Sort key that puts item 2 before item 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _references(records: Sequence[Mapping[str, Any]], benchmark_used: bool) -> str:
    keys = ["rosenthal"]
    keys += sorted({r.get("ddf", "containment") for r in records})
    if benchmark_used:
        keys.insert(0, "fluckiger")
    couples = {_couple_question(r, {f["term"] for f in r["fixed"]}) for r in records}
    if couples & {"couple_alliance_outcome", "couple_alliance_outcome_roles"}:
        keys.append("kenny")
    if couples & {"split_alliance", "split_trajectory", "split_dropout"}:
        keys.append("bartle-haring")
    entries = sorted(dict.fromkeys(_REFERENCES[k] for k in keys))
    return _heading("References", "-") + "\n" + "\n\n".join(entries) + "\n"


def study_summary(
    records: Sequence[Mapping[str, Any]],
    flow: Mapping[str, Any],
    *,
    study: str,
    alliance: str,
    outcome: str,
    outcome_direction: str | None = None,
    labels: Labels | None = None,
    questions: Mapping[str, str] | None = None,
    benchmark: Mapping[str, Any] | None = BENCHMARK,
) -> str:
    """The summary of one study: each research question answered, then the data.

    Parameters
    ----------
    records : sequence of dict
        The study's model records, in config order.
    flow : dict
        The study's ``flow.json``.
    study : str
        The study's name (the title).
    alliance, outcome, outcome_direction, labels, benchmark
        As :func:`model_paragraph`.
    questions : mapping, optional
        Model name -> research question (the paragraph's title); default
        :func:`question_of`.

    Returns
    -------
    str
        Markdown that is also reStructuredText: a title, a sentence on how to read the
        statistics, one paragraph per model (:func:`model_paragraph`), the data
        paragraph (:func:`data_paragraph`) and the references cited.

    Raises
    ------
    TypeError
        *records* is not a sequence of dicts.
    KeyError
        A record lacks ``name``, ``fixed``, ``n_obs`` or ``n_groups``.
    """
    if isinstance(records, (str, bytes, Mapping)) or not all(
        isinstance(r, Mapping) for r in records
    ):
        raise TypeError(
            f"`records` must be a list of model records (dicts); got {type(records).__name__}."
        )
    for record in records:
        missing = [k for k in ("name", "fixed", "n_obs", "n_groups") if k not in record]
        if missing:
            raise KeyError(
                f"`records`: the record {record.get('name', '?')!r} lacks {missing}; pass the "
                "JSON written by fit_model(...).to_dict()."
            )
    labels = labels or PlainLabels()
    questions = dict(questions or {})
    ddfs = sorted({r.get("ddf", "containment") for r in records})
    how = (
        "Each question is answered by a multilevel model; *b* is the fixed effect in the "
        "instruments' points, with its 95% confidence interval, its test and the "
        "*r*-equivalent *r* = *t* / √(*t*² + *df*) (Rosenthal, 1991). Tests: "
        + "; ".join(_DDF_SENTENCE[d] for d in ddfs)
        + "."
    )
    if any(_is_glmm(r) for r in records):
        how += (
            " For the binary and count outcomes (generalised linear mixed models), *b* is on "
            "the log-odds or log-rate scale, OR (odds ratio) and IRR (incidence rate ratio) "
            "are e raised to *b*, with the exponentiated confidence interval of *b*, "
            "conditional on the random effects (a typical therapist), and the test is Wald "
            "*z*."
        )
    parts = [_heading(f"Results: {study}", "="), how + "\n"]
    for record in records:
        parts.append(
            model_paragraph(
                record,
                labels=labels,
                alliance=alliance,
                outcome=outcome,
                outcome_direction=outcome_direction,
                question=questions.get(record["name"]),
                benchmark=benchmark,
            )
        )
    parts.append(data_paragraph(flow, labels=labels))
    used = benchmark is not None and any(
        _is_alliance_outcome(r) and not _couple_question(r, {f["term"] for f in r["fixed"]})
        for r in records
    )
    parts.append(_references(records, used))
    return "\n".join(parts)


_DDF_SENTENCE = {
    "kenward-roger": "*t* on Kenward–Roger degrees of freedom (Kenward & Roger, 1997)",
    "satterthwaite": "*t* on Satterthwaite degrees of freedom (Kuznetsova et al., 2017)",
    "containment": "Wald *z* (Pinheiro & Bates, 2000)",
}
