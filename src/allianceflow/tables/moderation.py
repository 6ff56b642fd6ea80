"""Simple slopes of a moderated model as a published table (:func:`simple_slopes_table`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from .formatting import _label, format_number, format_p
from .table import Table

__all__ = ["simple_slopes_table", "level_label"]

#: Words for the levels of the canonical moderators.
LEVEL_LABELS = {"in_person": "In person", "video": "Video", "telephone": "Telephone"}
#: Words for the canonical moderators.
MODERATOR_LABELS = {"modality": "Session modality"}


def level_label(level: str, labels: Mapping[str, str] | None = None) -> str:
    """A moderator level in words: *labels*, then the canonical levels, then the level.

    >>> level_label("in_person"), level_label("+1 SD"), level_label("self_referral")
    ('In person', '+1 SD', 'Self referral')
    """
    if labels and level in labels:
        return labels[level]
    if level in LEVEL_LABELS:
        return LEVEL_LABELS[level]
    return level[:1].upper() + level[1:].replace("_", " ") if "_" in level else level


def simple_slopes_table(
    result: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    number: int | None = None,
) -> Table:
    """The simple slopes of a moderated model (its JSON's ``simple_slopes``) as a Table.

    Parameters
    ----------
    result : mapping
        A fitted model's record with ``simple_slopes`` and ``moderation``
        (:func:`allianceflow.models.moderation.fit_moderated`).
    labels : mapping, optional
        Words for terms and levels (``DEFAULT_LABELS`` and :data:`LEVEL_LABELS` otherwise).
    number : int, optional
        The table's number in its study (:func:`allianceflow.stages.table_settings`).

    Returns
    -------
    Table
        One row per alliance term and moderator level: the slope, its 95% CI and p;
        ``data`` holds the unrounded rows. The note states the formula and the cautions.

    Raises
    ------
    KeyError
        The record has no ``simple_slopes`` (not a moderated model).

    Examples
    --------
    >>> rec = {"name": "m", "moderation": {"moderator": "modality", "within": True},
    ...        "simple_slopes": [{"term": "alliance_within_lag", "moderator": "modality",
    ...          "level": "video", "value": 1.0, "slope": -0.3, "se": 0.1, "ci_low": -0.5,
    ...          "ci_high": -0.1, "df": None, "p": 0.003}]}
    >>> simple_slopes_table(rec).body.iloc[0].tolist()
    ['Alliance, within patient (previous session)', 'Video', '−0.30', '[−0.50, −0.10]', '.003']
    """
    if "simple_slopes" not in result:
        raise KeyError(
            f"`result` {result.get('name')!r} has no `simple_slopes`; it is not a moderated "
            "model (fit a preset with the `moderator` option)."
        )
    data = pd.DataFrame(result["simple_slopes"])
    moderation = result.get("moderation") or {}
    moderator = str(moderation.get("moderator", ""))
    named = _label(moderator, {**MODERATOR_LABELS, **(labels or {})}) if moderator else ""
    if named.startswith("moderator_"):
        named = named[len("moderator_") :].replace("_", " ")
    body = pd.DataFrame(
        {
            "Alliance term": [_label(t, labels) for t in data["term"]],
            named[:1].upper() + named[1:] if named else "Level": [
                level_label(str(lv), labels) for lv in data["level"]
            ],
            "Slope": [format_number(v) for v in data["slope"]],
            "95% CI": [
                f"[{format_number(lo)}, {format_number(hi)}]"
                for lo, hi in zip(data["ci_low"], data["ci_high"], strict=True)
            ],
            "*p*": [format_p(v) for v in data["p"]],
        }
    )
    within = (
        " The moderator varies within patients: slopes are for a patient at the mean of its"
        " between-patient part."
        if moderation.get("within")
        else ""
    )
    note = (
        "Slope of the outcome on the alliance at each level of the moderator, b1 + b3·m, with "
        "Var = Var(b1) + m²Var(b3) + 2m·Cov(b1, b3) from the fixed-effect covariance matrix "
        "(Aiken & West, 1991; Preacher, Curran & Bauer, 2006)." + within + " Tests of "
        "interactions have low power: overlapping intervals do not show that the slopes are "
        "equal."
    )
    return Table(
        name=f"simple_slopes_{result.get('name', 'model')}",
        title=f"Alliance–Outcome Slopes by {named.title() or 'Moderator'}",
        body=body,
        data=data,
        note=note,
        number=number,
    )
