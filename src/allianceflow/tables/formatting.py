"""Numbers and labels as APA prints them: the one rounding helper of the tables.

Numbers are formatted APA style (American Psychological Association, 2020, ch. 6–7):
estimates and intervals to two decimals, *p* to three decimals with "< .001" below that,
no leading zero for quantities that cannot exceed 1 (*p*, *r*, ICC, R²), and a true minus
sign (U+2212).

References
----------
American Psychological Association. (2020). *Publication manual of the American
Psychological Association* (7th ed.).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = ["DEFAULT_LABELS", "format_p", "format_r", "format_number"]

#: Readable names of the pipeline's standard variables and model terms.
DEFAULT_LABELS: dict[str, str] = {
    "Intercept": "Intercept",
    "alliance": "Alliance",
    "outcome": "Outcome",
    "alliance_within_lag": "Alliance, within patient (previous session)",
    "alliance_within": "Alliance, within patient",
    "alliance_between": "Alliance, between patients",
    "alliance_therapist": "Alliance, between therapists",
    "outcome_lag": "Outcome (previous session)",
    "session": "Session",
    "log_session": "log(session)",
}


def format_number(value: float | None, digits: int = 2) -> str:
    """Format *value* to fixed decimals with a true minus sign (U+2212); "" when missing.

    The one rounding helper of the tables: Python's ``format`` rounds the binary value half
    to even, symmetrically about zero, and a value that rounds to zero loses its sign
    (APA prints 0.00, not −0.00).

    >>> format_number(-0.0456), format_number(2.5, 0), format_number(-0.001), format_number(None)
    ('−0.05', '2', '0.00', '')
    """
    if value is None or pd.isna(value):
        return ""
    text = f"{value:.{digits}f}"
    return text.replace("-", "−") if float(text) != 0 else text.lstrip("-")


def _without_leading_zero(text: str) -> str:
    """``"0.05"`` → ``".05"``, ``"−0.05"`` → ``"−.05"`` (APA: quantities bounded by 1)."""
    if text.startswith("0."):
        return text[1:]
    if text.startswith("−0."):
        return "−" + text[2:]
    return text


def format_p(p: float | None) -> str:
    """APA p value: ``"< .001"``, else three decimals without the leading zero.

    >>> format_p(0.0004), format_p(0.0456), format_p(1.0)
    ('< .001', '.046', '1.000')
    """
    if p is None or pd.isna(p):
        return ""
    if p < 0.001:
        return "< .001"
    return _without_leading_zero(format_number(p, 3))


def format_r(r: float | None, digits: int = 2) -> str:
    """Format a quantity bounded by 1 (r, ICC, R²) without the leading zero, APA style.

    >>> format_r(0.283), format_r(-0.05), format_r(1.0)
    ('.28', '−.05', '1.00')
    """
    return _without_leading_zero(format_number(r, digits))


def _label(term: str, labels: Mapping[str, str] | Any | None) -> str:
    """Return the readable name of *term*.

    With a :class:`~allianceflow.labels.Labels`, its :meth:`~allianceflow.labels.Labels.term`;
    with a mapping, the mapping first, then :data:`DEFAULT_LABELS`, then the term in words.
    """
    from ..labels import Labels

    if isinstance(labels, Labels):
        return labels.term(term)
    if labels and term in labels:
        return labels[term]
    if term in DEFAULT_LABELS:
        return DEFAULT_LABELS[term]
    return Labels().term(term)
