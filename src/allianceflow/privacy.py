"""The privacy guard: refuse raw files that hold direct identifiers; pseudonymise ids.

Input to the pipeline is meant to be de-identified. :func:`find_identifiers` checks every
column of a raw export, by its name and by its content, for the direct identifiers of the
HIPAA Safe Harbor list and the GDPR's notion of directly identifying data that a session
export can carry: names, e-mail addresses, phone numbers, national-id-like numbers,
street addresses, postcodes, exact dates of birth and free-text notes.
:func:`check_privacy` raises a :class:`~allianceflow.io.DataError` naming the column and
the config switch (``drop_columns``) that drops it explicitly. It runs in the clean stage
before anything is written.

:func:`pseudonymise` replaces patient and therapist ids by a keyed hash (HMAC-SHA-256)
whose secret salt comes from the environment variable :data:`SALT_ENV`, never from the
config or the repository, so the same salt gives the same pseudonyms across runs and sites
while nobody without the salt can link them back by hashing candidate ids.

References
----------
U.S. Department of Health and Human Services (2012). Guidance regarding methods for
de-identification of protected health information in accordance with the HIPAA Privacy
Rule (Safe Harbor, 45 CFR 164.514(b)(2)).

Krawczyk, H., Bellare, M., & Canetti, R. (1997). HMAC: Keyed-hashing for message
authentication. RFC 2104.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .io import DataError, _distinct

__all__ = [
    "Finding",
    "find_identifiers",
    "check_privacy",
    "pseudonymise",
    "get_salt",
    "SALT_ENV",
    "MIN_SALT_LENGTH",
]

#: Environment variable that holds the secret salt of :func:`pseudonymise`.
SALT_ENV = "ALLIANCEFLOW_SALT"
#: Shortest salt accepted (characters).
MIN_SALT_LENGTH = 16
#: Hex characters kept of each HMAC (64 bits: a collision among 10^6 ids has odds ~3e-8).
_HASH_CHARS = 16

# --------------------------------------------------------------------------- by name

_NAME_RULES: list[tuple[str, re.Pattern]] = [
    ("e-mail addresses", re.compile(r"(^|_)(e_?mail|email_?address|mail)($|_)")),
    (
        "phone numbers",
        re.compile(
            r"(^|_)(phone|telephone|tel|mobile|cell|gsm|telefoon|telefon)($|_|no|nr|number)"
        ),
    ),
    (
        "national id numbers",
        re.compile(
            r"(^|_)(ssn|bsn|nhs_?(no|number)?|national_?id|nin|insurance_?(no|number)|passport|social_?security|personnummer|sofi)($|_)"
        ),
    ),
    (
        "dates of birth",
        re.compile(
            r"(^|_)(dob|birth_?date|date_?of_?birth|birthday|geboortedatum|geburtsdatum|born)($|_)"
        ),
    ),
    ("street addresses", re.compile(r"(^|_)(address|street|adres|straat|strasse|residence)($|_)")),
    ("postcodes", re.compile(r"(^|_)(post_?code|postal_?code|zip|zip_?code|postcode)($|_)")),
    (
        "names",
        re.compile(
            r"(^|_)(name|first_?name|last_?name|surname|family_?name|given_?name|full_?name|naam|voornaam|achternaam|initials)($|_)"
        ),
    ),
    (
        "free-text notes",
        re.compile(
            r"(^|_)(notes?|comments?|remarks?|free_?text|memo|narrative|opmerking(en)?|bemerkung(en)?)($|_)"
        ),
    ),
]

# --------------------------------------------------------------------------- by content

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_NHS = re.compile(r"^\d{3}[ -]\d{3}[ -]\d{4}$")
_LONG_NUMBER = re.compile(r"^\d{9,12}$")
_PHONE = re.compile(r"^(\+|00)?[\d\s\-().]{8,}\d$")
#: Letters of a Dutch postcode: F, I, O, Q, U and Y are not used, nor SA, SD and SS
#: (PostNL, "Postcodeboek"), which keeps term codes such as 2024FA or 2025SU apart.
_NL_LETTERS = r"(?!S[ADS])[A-EGHJ-NPR-TV-XZ]{2}"
_POSTCODE = re.compile(
    r"^(?:[A-Z]{1,2}\d[A-Z\d]?\s+\d[A-Z]{2}"  # UK, with the space: SW1A 1AA
    rf"|[1-9]\d{{3}}\s{_NL_LETTERS}"  # Netherlands, with the space: 1234 AB
    r"|[A-Z]\d[A-Z]\s\d[A-Z]\d)$"  # Canada: K1A 0B1
)
#: The same formats in any case and without the space (sw1a1aa, 1234ab, k1a0b1): alone they
#: could be a record code (P12AB) or a term (2024SP), so they count when they are most of a
#: column's values, and four digits that are all years (1900-2099) read as terms or cohorts.
_POSTCODE_LOOSE = re.compile(
    r"^(?:[A-Z]{1,2}\d[A-Z\d]?\s*\d[ABD-HJLNP-UW-Z]{2}"
    rf"|[1-9]\d{{3}}\s*{_NL_LETTERS}"
    r"|[A-Z]\d[A-Z]\s*\d[A-Z]\d)$",
    re.IGNORECASE,
)
_YEAR_CODE = re.compile(r"^(?:19|20)\d\d\s*[A-Z]{2}$", re.IGNORECASE)
#: Share of a column's distinct values that must be loose postcodes.
_POSTCODE_SHARE = 0.5
#: A mapped category column (arm, informant, rupture, ending) with at most this many distinct
#: values holds labels ("Usual Care"), not names.
_MAX_CATEGORY_LEVELS = 20
#: Canonical columns that hold category labels.
CATEGORY_COLUMNS = ("condition", "informant", "rupture", "ending", "role")
_STREET_WORDS = (
    r"street|st|road|rd|avenue|ave|lane|ln|drive|dr|way|close|court|ct|place|pl|boulevard|blvd"
    r"|square|crescent|terrace"
)
_STREET = re.compile(
    rf"^\d+[a-z]?,?\s+(?:[A-Za-z'.-]+\s+){{0,3}}(?:{_STREET_WORDS})\.?(?:\s|,|$)"
    r"|[A-Za-zÀ-ÿ-]+(?:straat|weg|laan|plein|gracht|strasse|straße|gasse|allee)\s+\d+[a-z]?\b",
    re.IGNORECASE,
)
_DATE = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4})$|^(\d{4})-(\d{1,2})-(\d{1,2})")
_PARTICLES = {
    "van",
    "de",
    "der",
    "den",
    "von",
    "da",
    "di",
    "le",
    "la",
    "du",
    "ten",
    "ter",
    "del",
    "dos",
    "el",
    "bin",
    "ibn",
}
_TITLES = {
    "dr",
    "dr.",
    "drs",
    "drs.",
    "prof",
    "prof.",
    "mr",
    "mr.",
    "mrs",
    "mrs.",
    "ms",
    "ms.",
    "mx",
    "mx.",
    "miss",
    "sir",
    "dhr",
    "dhr.",
    "mevr",
    "mevr.",
    "herr",
    "frau",
}
_INITIAL = re.compile(r"^[A-ZÀ-Þ]\.(?:[A-ZÀ-Þ]\.)*$")
_NAME_WORD = re.compile(r"^[A-ZÀ-Þ][a-zà-ÿ'’]+(?:-[A-ZÀ-Þ][a-zà-ÿ'’]+)?$")
_NAME_IN_TEXT = re.compile(
    r"(?<![.!?]\s)(?<!^)\b[A-ZÀ-Þ][a-zà-ÿ]+\s+(?:(?:van|de|der|den|von)\s+)*[A-ZÀ-Þ][a-zà-ÿ]+\b"
)
#: A column is free text when at least this share of its values have five or more words.
_FREE_TEXT_SHARE = 0.2
#: A column holds names when at least this many distinct values look like "First Last".
_MIN_NAMES = 3
#: Birth dates: a date column whose dates lie at least this many years before today.
_BIRTH_YEARS = 12


@dataclass(frozen=True)
class Finding:
    """One column that looks like a direct identifier.

    Attributes
    ----------
    column : str
        The raw column name.
    kind : str
        What it looks like, e.g. ``"e-mail addresses"``.
    evidence : str
        ``"name"`` (the column's name), ``"content"`` or ``"name and content"``.
    row : int or None
        The source row of the first offending value (content findings).
    """

    column: str
    kind: str
    evidence: str
    row: int | None = None


def _normal_name(column: str) -> str:
    """``'E-mail Address'`` → ``'e_mail_address'``; ``'PatientName'`` → ``'patient_name'``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(column))
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def _by_name(column: str) -> str | None:
    name = _normal_name(column)
    for kind, pattern in _NAME_RULES:
        if pattern.search(name):
            return kind
    return None


def _is_name(value: str) -> bool:
    """Whether *value* reads as a person's name: "Anna de Vries", "Dr Jane Smith", "Smith, J."."""
    words = value.replace(",", " ").split()
    titled = bool(words) and words[0].lower() in _TITLES
    if titled:
        words = words[1:]
    if not (1 if titled else 2) <= len(words) <= 4:
        return False
    core = [w for w in words if w.lower() not in _PARTICLES]
    initials = [w for w in core if _INITIAL.match(w)]
    named = [w for w in core if _NAME_WORD.match(w)]
    return (
        len(core) >= (1 if titled else 2)
        and len(named) >= 1
        and len(named) + len(initials) == len(core)
        and words[0].lower() not in _PARTICLES
    )


_LETTERS = re.compile(r"^[^\W\d_]+(?:['’.-][^\W\d_]*)*\.?$")


def _is_name_in_id(value: str) -> bool:
    """Whether an id reads as a name in any case: "JANE SMITH", "J Smith", "Smith, Jane".

    In a patient or therapist column an id is a code; two to four words made only of
    letters (an initial may end in a period) are a person's name, whatever their case.
    """
    words = value.replace(",", " ").split()
    return 2 <= len(words) <= 4 and all(_LETTERS.match(w) for w in words)


def _first_names(unique: pd.Series) -> bool:
    """Whether most ids are single words of three or more letters ("Anna", "PETER")."""
    single = unique.map(lambda v: bool(_LETTERS.match(v)) and len(v) >= 3).astype(bool)
    return int(single.sum()) >= 3 and float(single.mean()) >= 0.5


def _is_number(value: str) -> bool:
    try:
        float(value.replace(",", "."))
    except ValueError:
        return False
    return True


def _birth_date(value: str, this_year: int) -> bool:
    match = _DATE.match(value)
    if not match:
        return False
    year = int(match.group(3) or match.group(4))
    return 1900 <= year <= this_year - _BIRTH_YEARS


def _by_content(
    values: pd.Series,
    rows: pd.Series,
    *,
    is_date_column: bool,
    this_year: int,
    is_id_column: bool = False,
    is_category_column: bool = False,
    declared: frozenset[str] = frozenset(),
    distinct: tuple[np.ndarray, pd.Series] | None = None,
) -> tuple[str, int] | None:
    """Return the first identifier kind found in *values* and its source row, else None.

    The checks read each distinct stripped value once; rows are only counted (free text)
    or searched for the first row holding a value found (the source row reported).
    """
    if distinct is not None or (
        len(values) and pd.api.types.infer_dtype(values, skipna=True) == "string"
    ):
        # Text cells: factorised once; the stripped distinct values get codes of their own.
        codes, uniques = distinct if distinct is not None else pd.factorize(values)
        stripped = pd.Series(uniques, dtype=object).astype(str).str.strip()
        text_codes, distinct = pd.factorize(stripped)
        row_codes = text_codes[codes]
    else:
        row_codes, distinct = pd.factorize(values.astype(str).str.strip())
    distinct = pd.Series(distinct, dtype=object)
    kept = (distinct.ne("") & ~distinct.isin(declared)).to_numpy()
    if not kept.any():
        return None
    # The distinct present values in order of first appearance, as ``text.unique()`` gives.
    positions = np.flatnonzero(kept)
    unique = pd.Series(distinct.to_numpy()[positions], dtype=object)
    per_value = np.bincount(row_codes, minlength=len(distinct))
    row_numbers = rows.to_numpy()

    def first_row(mask_unique: pd.Series) -> int:
        hits = positions[mask_unique.to_numpy(dtype=bool)]
        return int(row_numbers[np.isin(row_codes, hits)][0])

    def share(mask_unique: pd.Series) -> float:
        hits = positions[mask_unique.to_numpy(dtype=bool)]
        return int(per_value[hits].sum()) / int(per_value[positions].sum())

    phone = unique.map(_is_phone).astype(bool)
    loose = unique.str.match(_POSTCODE_LOOSE)
    years = unique.str.match(_YEAR_CODE)
    loose_postcodes = (
        loose.mean() >= _POSTCODE_SHARE and not bool(years[loose].all()) if loose.any() else False
    )
    checks = [
        ("e-mail addresses", unique.str.contains(_EMAIL)),
        (
            "national id numbers",
            unique.str.match(_SSN)
            | (~phone & (unique.str.match(_NHS) | unique.str.match(_LONG_NUMBER))),
        ),
        ("phone numbers", phone),
        (
            "postcodes",
            unique.str.match(_POSTCODE) | (loose & loose_postcodes),
        ),
        ("street addresses", unique.str.contains(_STREET)),
    ]
    for kind, mask in checks:
        if mask.any():
            return kind, first_row(mask)
    if not is_date_column:
        births = unique.map(lambda v: _birth_date(v, this_year)).astype(bool)
        if births.any():
            return "dates of birth", first_row(births)
    words = unique.str.split().str.len()
    long_text = (words >= 5) | (unique.str.len() >= 40)
    if long_text.any() and share(long_text) >= _FREE_TEXT_SHARE:
        return "free-text notes", first_row(long_text)
    names = unique.map(_is_name).astype(bool)
    if is_category_column and len(unique) <= _MAX_CATEGORY_LEVELS:
        names[:] = False
    if is_id_column:
        names = names | unique.map(_is_name_in_id).astype(bool)
        if _first_names(unique):
            names = names | unique.map(lambda v: bool(_LETTERS.match(v))).astype(bool)
    numeric = unique.map(_is_number).astype(bool)
    if (
        names.sum() >= _MIN_NAMES
        or (names.any() and numeric.mean() >= 0.5)
        or (names.any() and is_id_column)
    ):
        return "names", first_row(names)
    in_text = long_text & unique.str.contains(_NAME_IN_TEXT)
    if in_text.any():
        return "names in free text", first_row(in_text)
    return None


def _is_phone(value: str) -> bool:
    if not _PHONE.match(value) or _DATE.match(value) or re.fullmatch(r"-?\d+\.\d+", value):
        return False
    digits = sum(c.isdigit() for c in value)
    formatted = value.startswith(("+", "0"))
    return 9 <= digits <= 15 and formatted


def find_identifiers(
    raw: pd.DataFrame,
    *,
    exempt: Iterable[str] = (),
    date_columns: Iterable[str] = (),
    this_year: int | None = None,
    id_columns: Iterable[str] = (),
    category_columns: Iterable[str] = (),
    declared: Mapping[str, Iterable[str]] | None = None,
    distinct: dict[str, tuple[np.ndarray, pd.Series]] | None = None,
) -> list[Finding]:
    """Every column of *raw* that looks like a direct identifier, by name or content.

    Parameters
    ----------
    raw : pandas.DataFrame
        Text columns as read by :func:`allianceflow.io.read_raw` (``_source_row`` is used
        for row numbers and not checked).
    exempt : iterable of str
        Raw columns not checked by content (their name is still checked): only for columns
        a researcher has inspected and found free of identifiers.
    date_columns : iterable of str
        Raw columns of session dates (mapped to ``date``): old dates there are not taken
        for dates of birth.
    this_year : int, optional
        The current year (for the date-of-birth check); today's year when omitted.
    id_columns : iterable of str
        Raw columns mapped to patient or therapist ids: one value that reads as a person's
        name ("Dr Jane Smith", "Smith, J.") is enough there.
    category_columns : iterable of str
        Raw columns mapped to a category (arm, informant, rupture, ending): with at most
        20 distinct values they hold labels ("Usual Care"), which are not taken for names;
        every other check still applies.
    declared : mapping of str to iterable of str, optional
        Per raw column, values the configuration declares and so are not content: the
        study's ``missing_codes`` ("Not Applicable") and the raw values it relabels under
        ``read.labels``. The key ``"*"`` applies to every column.
    distinct : dict, optional
        Filled with each checked column that is all text with no missing cell: its codes
        and distinct values (``column == distinct[codes]``), so that later steps need not
        factorise the column again.

    Returns
    -------
    list of Finding
        In column order; empty when nothing looks identifying.

    Notes
    -----
    By name: the column name, split at case changes and punctuation, contains a word
    such as ``email``, ``phone``, ``ssn``/``bsn``/``nhs``, ``dob``/``birth_date``,
    ``address``/``street``, ``postcode``/``zip``, ``name``/``surname`` or
    ``notes``/``comment``. By content, any single value is enough for e-mail addresses,
    national-id-like numbers (``123-45-6789``, ``943 476 5919``, 9–12 digits), phone numbers
    (9–15 digits starting with ``+`` or 0), postcodes (UK, Dutch,
    Canadian formats), street addresses and dates at least 12 years old outside the
    session-date column; person names ("Anna de Vries") need three distinct ones, or one
    among mostly numbers; free text needs 20% of values with five or more words or 40
    characters, and any such value with a "First Last" pair inside it counts as names.
    """
    if this_year is None:
        this_year = pd.Timestamp.today().year
    exempt, date_columns, id_columns = set(exempt), set(date_columns), set(id_columns)
    category_columns = set(category_columns)
    declared = {str(k): {str(v).strip() for v in vs} for k, vs in (declared or {}).items()}
    everywhere = declared.get("*", set())
    rows = (
        raw["_source_row"]
        if "_source_row" in raw
        else pd.Series(range(1, len(raw) + 1), index=raw.index)
    )
    findings = []
    for column in raw.columns:
        if column == "_source_row":
            continue
        named = _by_name(column)
        found = None
        if column not in exempt:
            coded = _distinct(raw[column])
            if coded is not None and distinct is not None:
                # kept for later steps: 32-bit codes halve what the run holds meanwhile
                distinct[str(column)] = (coded[0].astype(np.int32), coded[1])
            found = _by_content(
                raw[column].fillna("") if coded is None else raw[column],
                rows,
                is_date_column=column in date_columns,
                this_year=this_year,
                is_id_column=column in id_columns,
                is_category_column=column in category_columns,
                declared=frozenset(everywhere | declared.get(str(column), set())),
                distinct=coded,
            )
        if named and found:
            findings.append(Finding(str(column), found[0], "name and content", found[1]))
        elif named:
            findings.append(Finding(str(column), named, "name"))
        elif found:
            findings.append(Finding(str(column), found[0], "content", found[1]))
    return findings


#: Identifiers in an id column that keyed hashing makes safe (only the hash is written).
_HASHABLE = ("national id numbers", "phone numbers", "names")


def check_privacy(
    raw: pd.DataFrame,
    *,
    source: str,
    mapped: dict[str, str] | None = None,
    exempt: Iterable[str] = (),
    date_columns: Iterable[str] = (),
    hash_ids: bool = False,
    key: str = "drop_columns",
    config: str = "config.yaml",
    declared: Mapping[str, Iterable[str]] | None = None,
    distinct: dict[str, tuple[np.ndarray, pd.Series]] | None = None,
) -> None:
    """Raise a :class:`DataError` for the first column that looks like a direct identifier.

    Parameters
    ----------
    raw : pandas.DataFrame
        The raw text columns (after the study's ``drop_columns`` are removed).
    source : str
        File name for the message.
    mapped : dict, optional
        Raw column → canonical name; identifiers in a mapped column cannot simply be
        dropped, so the message asks for pseudonymous codes instead.
    exempt, date_columns
        See :func:`find_identifiers`.
    hash_ids : bool
        Whether patient and therapist ids will be pseudonymised; then record numbers,
        phone-like numbers and names in those columns are accepted, since only their keyed
        hash is written (and no reason in the exclusions quotes a raw id).
    key : str
        The config key named in the message, e.g. ``studies.example.drop_columns``.
    config : str
        The configuration file named in the message.
    declared : mapping, optional
        Values the configuration declares, per raw column (see :func:`find_identifiers`).
    distinct : dict, optional
        Filled with the codes and distinct values of the all-text columns checked (see
        :func:`find_identifiers`).

    Raises
    ------
    DataError
        "sessions.csv: column 'Email' looks like it holds e-mail addresses (by its name and
        content; first at row 2). ..."
    """
    mapped = mapped or {}
    ids = [c for c, v in mapped.items() if v in ("patient", "therapist")]
    categories = [c for c, v in mapped.items() if v in CATEGORY_COLUMNS]
    found = find_identifiers(
        raw,
        exempt=exempt,
        date_columns=date_columns,
        id_columns=ids,
        category_columns=categories,
        declared=declared,
        distinct=distinct,
    )
    for finding in found:
        canonical = mapped.get(finding.column)
        if (
            hash_ids
            and canonical in ("patient", "therapist")
            and finding.kind in _HASHABLE
            and finding.evidence == "content"
        ):
            continue
        where = f"; first at row {finding.row}" if finding.row is not None else ""
        head = (
            f"{source}: column {finding.column!r} looks like it holds {finding.kind} (by its "
            f"{finding.evidence}{where}). The input must be de-identified before the pipeline "
            "reads it."
        )
        if canonical in ("patient", "therapist"):
            fix = (
                f" The column is mapped to {canonical!r}: replace the values by pseudonymous "
                f"codes in the export, or set `hash_ids: true` and the environment variable "
                f"{SALT_ENV} so only keyed hashes are written."
            )
            if finding.kind not in _HASHABLE:
                fix = (
                    f" The column is mapped to {canonical!r}: replace the values by "
                    "pseudonymous codes in the export."
                )
        elif canonical is not None:
            study = key.removesuffix("drop_columns").removesuffix("privacy.")
            code = (
                f"if it is a missing-value code (such as 'Not Applicable'), list it under "
                f"`{study}read.missing_codes`; "
                if finding.kind == "names"
                else ""
            )
            fix = (
                f" The column is mapped to {canonical!r}: correct the value in the file; {code}"
                f"if the column is free of identifiers, add it to "
                f"`{study}privacy.privacy_exempt` in {config}."
            )
        else:
            fix = (
                f" Remove the column from the export, or add {finding.column!r} to `{key}` in "
                f"{config} to drop it explicitly before anything is read from it."
            )
        raise DataError(head + fix)


def get_salt(env: dict[str, str] | None = None) -> str:
    """Read the secret salt from the environment variable :data:`SALT_ENV`.

    Raises
    ------
    DataError
        When the variable is unset or shorter than :data:`MIN_SALT_LENGTH` characters.
    """
    env = os.environ if env is None else env
    salt = env.get(SALT_ENV, "")
    if len(salt) < MIN_SALT_LENGTH:
        state = "is not set" if not salt else f"has only {len(salt)} characters"
        raise DataError(
            f"`privacy.hash_ids` is true but the environment variable {SALT_ENV} {state}; it must "
            f"hold a secret of at least {MIN_SALT_LENGTH} characters, e.g. export {SALT_ENV}="
            "$(python -c 'import secrets; print(secrets.token_hex(32))'). Keep the same salt "
            "for every run and site, and never put it in config.yaml or the repository."
        )
    return salt


def pseudonymise(ids: pd.Series, salt: str) -> pd.Series:
    r"""Replace ids by the first 16 hex characters of HMAC-SHA-256(salt, id).

    Missing ids stay missing. The same id and salt always give the same pseudonym.

    .. math::

        \mathrm{pseudonym}(x) = \mathrm{hex}(\mathrm{HMAC}_{\mathrm{SHA256}}(s, x))_{1..16}

    Raises
    ------
    ValueError
        If *salt* is shorter than :data:`MIN_SALT_LENGTH`, or two ids collide.

    Examples
    --------
    >>> pseudonymise(pd.Series(["P001", "P002"]), "a" * 16).tolist()
    ['0a988d4d850f1f20', '9f0dd855169c96b0']
    """
    if not isinstance(salt, str) or len(salt) < MIN_SALT_LENGTH:
        raise ValueError(
            f"`salt` must be a string of at least {MIN_SALT_LENGTH} characters; got "
            f"{len(salt) if isinstance(salt, str) else type(salt).__name__}."
        )
    key = salt.encode("utf-8")
    unique = pd.unique(ids.dropna())
    table = {
        v: hmac.new(key, str(v).encode("utf-8"), hashlib.sha256).hexdigest()[:_HASH_CHARS]
        for v in unique
    }
    if len(set(table.values())) != len(table):
        raise ValueError("Two ids received the same pseudonym; use a different salt.")
    return ids.map(table, na_action="ignore").astype(object)
