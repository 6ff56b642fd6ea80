"""Turn a raw session export into the canonical session table.

Every row read is either kept or excluded with a reason: the exclusions table names the
source file, the source row (the row a spreadsheet shows), the rule and the reason, and the
flow counts reconcile ``read == kept + excluded`` at session and at patient level.

The stage runs, in order: drop the columns the study declares (``drop_columns``); the
privacy guard (:mod:`allianceflow.privacy`); wide → long (``format: wide``); the column
mapping; declared missing codes → missing; the rules below, each with a policy from the
study's ``rules`` block; calendar dates → ``days``; optional keyed hashing of ids; and the
data contract (:mod:`allianceflow.contract`).

How treatment ended is patient-level information. A column mapped to ``ending`` records it
(after the study's ``labels``: planned, unilateral, dropout or ongoing; blank when not
recorded); a value on any of a patient's rows applies to all of them, so an export that
writes the discharge reason on the last row only is read correctly. For endings inferred
from a gap (:func:`allianceflow.clinical.endings_and_dose`), the time from each patient's
first session to the data extraction is ``followup_days``: computed from the study's
``extraction_date`` (the day the export was made, ``YYYY-MM-DD``) and the session dates, or
mapped from the export when it has no dates.

=====================  ===========================================  =================  =======
rule                   what it finds                                policies           default
=====================  ===========================================  =================  =======
id_variant             spellings of one id: case, spaces, ``1.0``   error merge        merge
                       or ``01`` for ``1``, Unicode form            exclude
missing_id             empty patient id or session number           error exclude      exclude
label_variant          spellings of one arm, informant or rupture   error merge        merge
                       label: case, spaces, Unicode form
not_a_number           text in a numeric column                     error exclude      error
                                                                    missing
ending_invalid         an ``ending`` that is not planned,           error missing      error
                       unilateral, dropout or ongoing after
                       ``labels``
ending_conflict        a patient whose ``ending`` or                error exclude      error
                       ``followup_days`` differs between rows
session_invalid        session number < 1 or not whole              error exclude      error
date_invalid           a date that does not match ``date_format``   error exclude      error
after_extraction       a session dated after ``extraction_date``    error exclude      error
                       (or after the mapped ``followup_days``,
                       or a negative ``followup_days``)
duplicate_identical    an identical copy of an earlier row          error exclude      exclude
duplicate_conflicting  same patient × session × informant,          error exclude      exclude
                       different values (all copies)
out_of_range           item outside its instrument's range          error exclude      error
                                                                    missing
session_order          a later session dated before an earlier one  error exclude      flag
                                                                    flag ignore
session_gap            missing session numbers before a session     error flag ignore  flag
therapist_change       a patient's therapist changes                error exclude      flag
                                                                    flag ignore
min_sessions           a patient with fewer than ``min_sessions``   error exclude      exclude
                                                                    flag
missing_therapist      a blank therapist                            error fill         fill
                                                                    exclude flag
condition_change       a patient whose arm (``condition``)          error flag         flag
                       changes between rows                         exclude
system_change          a client in more than one system, or none    error exclude      error
role_change            a client whose role changes between rows     error exclude      error
system_therapist       a system seen by more than one therapist     error exclude      error
system_size            a system with one client (no partner)        error exclude      flag
                                                                    flag
system_roles           a client without a role, a role held twice   error exclude      flag
                       in a system, or other roles than the other   flag
                       systems (``clean.distinguishable: true``)
system_sessions        a session no other client of its system      error exclude      flag
                       attended (see :mod:`.systems`)               flag ignore
=====================  ===========================================  =================  =======

``error`` stops with one paragraph naming the file, row, column and fix; ``exclude`` drops
the row (or, for patient rules, all the patient's rows) and logs it with action
``excluded``; ``missing`` blanks the value (action ``set_missing``); ``merge`` rewrites the
id to the patient's most frequent spelling (action ``altered``); ``flag`` keeps the row and
logs it (action ``flagged``); ``fill`` (``missing_therapist``) fills a blank therapist from
the patient's other rows when they name exactly one (action ``altered``) and excludes the
rows it cannot fill; ``ignore`` does nothing.

The analysis uses one arm per patient, by intention to treat: the arm of the patient's
first recorded session (by session number, then source row), taken before any row rule,
so it counts even when a rule excludes that session. ``condition_change: flag`` (the
default) keeps a patient whose arm changes and rewrites the other rows to that first arm
(action ``altered``), because excluding such patients is a per-protocol analysis that
can break the comparability of randomised arms (CONSORT 2010, item 16: analyse by
original assigned groups); ``exclude`` drops them and ``error`` stops.

The stage is the list of named steps :data:`STEPS`, each a function of a
:class:`~allianceflow.clean.state.CleanRun` that can be run and tested alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from ..io import DataError
from .columns import map_columns
from .finish import finish, reconcile
from .prepare import (
    apply_labels,
    canonical_ids,
    check_endings,
    drop_columns,
    map_to_canonical,
    parse_values,
    patient_level_values,
    privacy_guard,
    reshape,
)
from .rules import (
    check_item_ranges,
    condition_change,
    duplicates,
    followup,
    min_sessions,
    missing_ids,
    missing_therapist,
    parse_dates,
    session_gaps,
    session_numbers,
    session_order,
    therapist_change,
)
from .state import (
    ENDING_TYPES,
    EXCLUSION_COLUMNS,
    ID_COLUMNS,
    RULES,
    CleanResult,
    CleanRun,
)
from .systems import systems, systems_read

__all__ = [
    "CleanResult",
    "CleanRun",
    "DataError",
    "clean_sessions",
    "map_columns",
    "reconcile",
    "ENDING_TYPES",
    "EXCLUSION_COLUMNS",
    "ID_COLUMNS",
    "RULES",
    "STEPS",
]

#: The steps of :func:`clean_sessions`, in the order they run: (name, function of a
#: :class:`CleanRun`).
STEPS: tuple[tuple[str, Callable[[CleanRun], None]], ...] = (
    ("drop_columns", drop_columns),
    ("privacy_guard", privacy_guard),
    ("reshape", reshape),
    ("map_to_canonical", map_to_canonical),
    ("canonical_ids", canonical_ids),
    ("systems_read", systems_read),
    ("parse_values", parse_values),
    ("apply_labels", apply_labels),
    ("check_endings", check_endings),
    ("patient_level_values", patient_level_values),
    ("missing_ids", missing_ids),
    ("session_numbers", session_numbers),
    ("parse_dates", parse_dates),
    ("duplicates", duplicates),
    ("item_ranges", check_item_ranges),
    ("session_order", session_order),
    ("session_gaps", session_gaps),
    ("missing_therapist", missing_therapist),
    ("therapist_change", therapist_change),
    ("condition_change", condition_change),
    ("followup", followup),
    ("min_sessions", min_sessions),
    ("systems", systems),
    ("finish", finish),
)


def clean_sessions(
    raw: pd.DataFrame,
    study: dict[str, Any],
    *,
    source: str,
    name: str | None = None,
    collect: bool = False,
    env: dict[str, str] | None = None,
    config: str = "config.yaml",
) -> CleanResult:
    """Clean one raw export (as read by :func:`allianceflow.io.read_raw`).

    Parameters
    ----------
    raw : pandas.DataFrame
        Text columns plus ``_source_row`` (``raw.attrs["date_columns"]`` names columns of
        typed dates, read as ``%Y-%m-%d``).
    study : dict
        The study's block of the validated config: ``columns``, ``format``,
        ``wide_pattern``, ``missing_codes``, ``decimal``, ``labels``, ``date_format``,
        ``extraction_date``, ``drop_columns``, ``privacy_exempt``, ``hash_ids``,
        ``min_sessions``, ``rules``, ``distinguishable`` (couples and families),
        ``instruments`` (item ranges come from :mod:`allianceflow.instruments`).
    source : str
        The file name, used in exclusions and messages.
    name : str, optional
        The study's name, so messages can name config keys as ``studies.<name>.<key>``.
    collect : bool
        Check mode (``allianceflow check``): rules whose policy is ``error`` log the rows
        with action ``error`` and drop them instead of stopping, so every problem is listed.
    env : dict, optional
        Environment to read the salt from (default ``os.environ``).
    config : str
        The name of the configuration file, used in messages.

    Returns
    -------
    CleanResult
        ``sessions``: the canonical table sorted by patient and session, with ``days``
        since the patient's first kept session (calendar dates are dropped), and, when the
        study has them, the patient-level ``ending`` (category of planned, unilateral,
        dropout, ongoing; missing when not recorded) and ``followup_days`` (days from the
        patient's first kept session to ``extraction_date``); ``exclusions``:
        one row per excluded, altered or flagged source row and rule; ``flow``: counts
        that reconcile (:func:`reconcile`), values missing per column
        (``values.missing_by_column``: blank and coded cells among the rows read, missing
        cells among the kept ones), and per instrument the kept sessions that will get no
        total because too many items are missing (``scores``, stated in ``warnings``).

    Raises
    ------
    DataError
        One paragraph naming the file, row, column and fix: a column that looks like a
        direct identifier, a mapping error, an ``extraction_date`` without session dates
        (or with a mapped ``followup_days``), or a rule whose policy is ``error``.

    Notes
    -----
    Missing codes are compared as text (``"NA"``, ``""``) and, in numeric columns, as
    numbers (``-9`` matches ``-9.0``). With ``decimal: ","`` a comma is the decimal mark.
    Ids are put in Unicode NFC and stripped of surrounding spaces; ids equal after
    compatibility normalisation, case folding, removal of all spaces and reading whole
    numbers as numbers (``1.0``, ``01``, ``1``) are spellings of one id
    (:func:`allianceflow.clean.prepare.id_key`). Patient-level rules (therapist change,
    arm change, too few sessions) act on all of a patient's rows. ``days`` is whole days
    since the patient's first kept dated session. Patient-level values (``ending``,
    ``followup_days``) are checked for conflicts and copied to all of the patient's rows
    before any row-level rule runs, so a value recorded on a row that a later rule
    excludes still describes the patient. A session on the extraction day counts as
    before the extraction, whatever its time of day. With ``hash_ids``, reasons in the
    exclusions name ids by their keyed hash, and no reason quotes a calendar date: a
    session out of order is "N days before the previous session".
    """
    run = CleanRun(raw, study, source=source, name=name, collect=collect, env=env, config=config)
    for _name, step in STEPS:
        step(run)
    if run.result is None:  # pragma: no cover - the last step always sets it
        raise RuntimeError("The clean steps ended without a result; the last step is `finish`.")
    return run.result
