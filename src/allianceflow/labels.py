r"""Words for column codes and model terms, for every figure, table and summary.

A study's figures and tables never print a column code (``wai_sr_total``,
``alliance_within_lag``) or a formula term (``C(condition)[T.tau]:off_track``): they print
the labels of a :class:`Labels` object, built from the study's ``report.labels`` section
in config and, for everything it does not name, from the instrument files.

Defaults
--------
* A score ``<instrument>_total`` is "<abbreviation> total" ("WAI-SR total", "ORS total");
  a subscale is "<abbreviation> <subscale label>" ("WAI-SR agreement on tasks"). The
  abbreviation is the parenthesised one in the instrument's ``version`` when there is one,
  else made from its ``name`` (initials of each capitalised word, the number after a
  hyphen kept: "Patient Health Questionnaire-9" gives "PHQ-9").
* The derive stage's generic ``alliance`` and ``outcome`` are the study's alliance and
  outcome scores, and the suffixes of :mod:`allianceflow.derive` are read in words:
  ``_within`` "within-patient (deviation from the patient's mean)", ``_between`` "patient
  mean", ``_lag`` "at the previous session", ``_next`` "at the next session", and so on
  (:data:`SUFFIXES`).
* Arms and informants keep their canonical code, with underscores read as spaces, unless
  config names them; "tau" is "treatment as usual".
* In couple and family therapy (a study that maps a column to ``system``) the people rated
  are clients: ``_within`` reads "within-client (deviation from the client's own mean)" and
  ``_between`` "client's mean over sessions", as the partner's columns do
  (:attr:`Labels.person`). A role's 0/1 column ``role_<identifier>`` (:func:`identifier`)
  reads as the role's words.

Model terms (:meth:`Labels.term`) follow patsy's names: ``:`` is an interaction, printed
"×"; a treatment contrast ``C(f)[T.level]`` is printed "<level> vs <reference>", the
reference being patsy's (the first level in sorted order, or the one given by
``Treatment(reference=...)``).

Examples
--------
>>> labels = Labels.from_config(
...     {
...         "measures": {"instruments": {"wai_sr": None, "ors": None},
...                      "alliance": "wai_sr_total", "outcome": "ors_total"},
...         "read": {"labels": {"condition": {"ROM feedback": "feedback", "TAU": "tau"}}},
...     }
... )
>>> labels.variable("alliance_within_lag")
"WAI-SR total at the previous session, within-patient (deviation from the patient's mean)"
>>> labels.term("C(condition)[T.tau]:off_track")
'Treatment as usual vs feedback × not on track'
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "Labels",
    "SUFFIXES",
    "FIXED_VARIABLES",
    "abbreviation",
    "identifier",
    "lower_first",
    "upper_first",
    "title_case",
]

#: Suffixes of the derive stage's columns, longest first, with how each reads after the
#: label of the column it is added to (see :mod:`allianceflow.derive`).
SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_within_detrended", ", deviation from the patient's own linear trend"),
    ("_patient_deviation", ", patient's deviation from the therapist's mean"),
    ("_therapist_mean", ", therapist mean"),
    ("_detrended", ", deviation from the patient's own linear trend"),
    ("_baseline", " at intake"),
    ("_within", ", within-patient (deviation from the patient's mean)"),
    ("_between", ", patient mean"),
    ("_pmean", ", patient mean (uncentred)"),
    ("_tmean", ", therapist mean (uncentred)"),
    ("_therapist", ", therapist mean"),
    ("_patient", ", patient's deviation from the therapist's mean"),
    ("_gmc", ", grand-mean centred"),
    ("_next", " at the next session"),
)

#: Lag suffixes: ``_lag`` (lag 1), ``_lag2`` …, ``_lead`` and ``_lead2`` …; the lag is
#: stated before the other suffixes ("… at the previous session, within-patient …").
_LAG = re.compile(r"^(?P<base>.+?)_(?P<kind>lag|lead)(?P<n>\d*)$")
_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}

#: Columns of the derive stage with a fixed meaning, and their labels.
FIXED_VARIABLES: Mapping[str, str] = MappingProxyType(
    {
        "Intercept": "Intercept",
        "session": "Session",
        "log_session": "Session (natural log)",
        "days": "Days since the first session",
        "off_track": "Not on track",
        "on_track": "On track",
        "track_status": "On-track status",
        "ruptures_before": "Ruptures at earlier sessions",
        "repairs_before": "Repairs at earlier sessions",
        "rupture_flag": "Rupture at this session",
        "rupture": "Coded rupture",
        "condition": "Arm",
        "informant": "Informant",
        "patient": "Patient",
        "therapist": "Therapist",
        "system": "Couple or family",
        "role": "Role in the couple or family",
        "ending": "Ending",
        "study": "Study",
        "modality": "Session modality",
        "feedback": "Feedback arm (vs treatment as usual)",
        "deteriorated": "Reliable deterioration",
        "improved": "Reliable improvement or recovery",
        "dropout": "Early ending (dropout or unilateral)",
        "sessions_attended": "Sessions attended",
        "Residual": "Residual",
    }
)

#: The partners' roles in words (the canonical ``role`` levels of a couple); a family role
#: (``mother``, ``child`` ...) reads as its code with underscores as spaces.
_ROLES = {"partner_a": "partner A", "partner_b": "partner B"}

#: What a study calls the people whose sessions are rated (:attr:`Labels.person`).
PERSONS = ("patient", "client")

#: The derive stage's suffixes in a study of clients (couple and family therapy), where
#: they read as the partner's own columns do ("within-partner (deviation from the
#: partner's own mean)"); every other suffix reads "client" for "patient".
_CLIENT_SUFFIXES = {
    ", within-patient (deviation from the patient's mean)": (
        ", within-client (deviation from the client's own mean)"
    ),
    ", patient mean": ", client's mean over sessions",
    ", patient mean (uncentred)": ", client's mean over sessions (uncentred)",
}

#: Session modalities in words (the canonical ``modality`` levels).
_MODALITIES = {"in_person": "in person", "video": "video", "telephone": "telephone"}

_ARMS = {"tau": "treatment as usual", "feedback": "feedback", "waitlist": "wait list"}
_CONTRAST = re.compile(
    r"^(?:C\((?P<factor>[A-Za-z_][\w.]*)(?:\s*,\s*(?P<coding>.*))?\)|(?P<bare>[A-Za-z_]\w*))"
    r"\[(?P<t>T\.)?(?P<level>[^\]]*)\]$"
)
_REFERENCE = re.compile(r"""reference\s*=\s*['"]?(?P<ref>[^'")]+)['"]?""")
_POWER = re.compile(r"^I\(\s*(?P<x>[A-Za-z_]\w*)\s*(?:\^|\*\*)\s*(?P<p>\d+)\s*\)$")
_FUNCTION = re.compile(r"^(?P<f>(?:np\.)?\w+)\(\s*(?P<x>[A-Za-z_]\w*)\s*\)$")
_FUNCTIONS = {
    "center": " (centred)",
    "scale": " (standardised)",
    "standardize": " (standardised)",
    "log": " (natural log)",
    "np.log": " (natural log)",
    "np.sqrt": " (square root)",
}
_POWERS = {2: "squared", 3: "cubed"}
_RANDOM = re.compile(r"\(([^()|]+?)\s*(\|\|?)\s*([^()|]+?)\)")


def upper_first(text: str) -> str:
    """Capitalise the first letter of *text*, leaving the rest as it is.

    Examples
    --------
    >>> upper_first("treatment as usual vs feedback")
    'Treatment as usual vs feedback'
    """
    return text[:1].upper() + text[1:]


_MINOR = frozenset(
    "a an the and but or for nor as at by in of off on per to up via vs with from".split()
)


def title_case(text: str) -> str:
    """APA title case: major words capitalised, minor words (and, of, vs …) not.

    Words already holding a capital (abbreviations) are kept as they are; the first word
    and the first word after a colon are capitalised.

    Examples
    --------
    >>> title_case("change in ORS total over sessions by arm and on-track status")
    'Change in ORS Total Over Sessions by Arm and On-Track Status'
    >>> title_case("growth (random intercepts for patients)")
    'Growth (Random Intercepts for Patients)'
    """
    words = text.split(" ")
    out = []
    for i, word in enumerate(words):
        first = i == 0 or out[-1].endswith(":")
        lead = word[: len(word) - len(word.lstrip("(\"'“‘["))]
        core = word[len(lead) :]
        if any(ch.isupper() for ch in core) or (core.lower() in _MINOR and not first):
            out.append(word)
        else:
            parts = re.split(r"([-–])", core)
            out.append(lead + "".join(upper_first(w) for w in parts))
    return " ".join(out)


def lower_first(text: str) -> str:
    """Lower the first letter of *text* unless it starts an abbreviation.

    A label that starts "WAI-SR" or "ORS" keeps its capitals; "Session" becomes "session".

    Examples
    --------
    >>> lower_first("Not on track"), lower_first("ORS total"), lower_first("A")
    ('not on track', 'ORS total', 'a')
    """
    if len(text) > 1 and (text[1].isupper() or text[1].isdigit()):
        return text
    return text[:1].lower() + text[1:]


def abbreviation(name: str, version: str | None = None) -> str:
    """The short name of an instrument, from its ``name`` (and ``version``) fields.

    A parenthesised abbreviation in *version* wins ("client (WAI-SR)" gives "WAI-SR").
    Otherwise: a one-word name is kept ("CORE-10"); else the initials of its capitalised
    words, a number after a final hyphen kept, and the part after " - " abbreviated the same
    way and joined with a hyphen.

    Examples
    --------
    >>> abbreviation("Working Alliance Inventory - Short Revised")
    'WAI-SR'
    >>> abbreviation("Patient Health Questionnaire-9"), abbreviation("Outcome Rating Scale")
    ('PHQ-9', 'ORS')
    >>> abbreviation("CORE-10"), abbreviation("Outcome Questionnaire-45.2")
    ('CORE-10', 'OQ-45.2')
    """
    found = re.search(r"\(([^()]+)\)", version or "")
    if found:
        return found.group(1).strip()
    if " " not in name.strip():
        return name.strip()
    parts = []
    for part in name.split(" - "):
        words = part.split()
        number = ""
        last = re.match(r"^(?P<w>.*?)-(?P<n>[\d.]+)$", words[-1])
        if last:
            words[-1], number = last.group("w"), "-" + last.group("n")
        initials = "".join(w[0] for w in words if w[:1].isupper())
        parts.append(initials + number)
    return "-".join(parts)


def identifier(label: Any, *, what: str = "label") -> str:
    """A label as a snake_case identifier, for the name of a column made from it.

    Accents are dropped (Unicode NFKD decomposition, combining marks removed), letters are
    case-folded, and each run of characters other than letters and digits becomes one
    underscore, none at either end. Letters of other scripts are kept, lower-cased, so
    ``role_<identifier>`` is a Python identifier, as patsy formulas need.

    Parameters
    ----------
    label : Any
        The label, e.g. a role as the export spells it.
    what : str, default 'label'
        What the label is, for the error message ("role").

    Returns
    -------
    str

    Raises
    ------
    ValueError
        *label* has no letter or digit.

    Examples
    --------
    >>> identifier("Partner B"), identifier("Mère"), identifier("Step-parent (2)")
    ('partner_b', 'mere', 'step_parent_2')
    >>> identifier("partner_a"), identifier("  Groß Eltern "), identifier("Мать")
    ('partner_a', 'gross_eltern', 'мать')
    """
    text = unicodedata.normalize("NFKD", str(label))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = re.sub(r"[\W_]+", "_", text).strip("_")
    if not text:
        raise ValueError(
            f"the {what} {label!r} has no letter or digit to name a column by; give it a name "
            "that has one."
        )
    return text


def _name_of(label: Any) -> str:
    """:func:`identifier` of *label*, or the label as text when it has no letter or digit."""
    try:
        return identifier(label)
    except ValueError:
        return str(label)


def _check_mapping(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"`report.labels.{key}` must be a mapping of code to label; got {type(value).__name__}."
        )
    out = {}
    for code, label in value.items():
        if not isinstance(label, str) or not label.strip():
            raise TypeError(
                f"`report.labels.{key}.{code}` must be a non-empty string; got {label!r}."
            )
        out[str(code)] = label
    return out


@dataclass(frozen=True)
class Labels:
    r"""Labels of a study's variables, instruments, arms and informants.

    Build it with :meth:`from_config` (the usual way) or directly. Every mapping is from
    a canonical code to words; a code it does not list gets a default (module docstring).

    Parameters
    ----------
    variables : mapping of str to str
        Column labels, e.g. ``{"ors_total": "Outcome Rating Scale total"}``. They win over
        every default and are used inside derived names too (``ors_total`` labels
        ``outcome_next`` when ``ors_total`` is the outcome).
    instruments : mapping of str to str
        Instrument abbreviations by id, e.g. ``{"wai_sr": "WAI-SR"}``.
    arms : mapping of str to str
        Labels of the levels of ``condition``, e.g. ``{"tau": "treatment as usual"}``.
    informants : mapping of str to str
        Labels of the levels of ``informant``.
    subscales : mapping of str to str
        Labels of subscale score columns (``wai_sr_task``), normally from the instrument files.
    names : mapping of str to str
        Full names of the instruments by abbreviation (``{"ORS": "Outcome Rating Scale"}``),
        for the abbreviations in table notes.
    alliance, outcome : str, optional
        The study's alliance and outcome score columns; the derive stage's generic
        ``alliance`` and ``outcome`` columns (and ``alliance_<component>``) are read as them.
    levels : mapping of str to sequence of str
        Known levels of categorical columns (``{"condition": ["feedback", "tau"]}``); the
        reference level of a contrast is the first in sorted order, as patsy codes it.
    person : {'patient', 'client'}, default 'patient'
        What the study calls the people whose sessions are rated. In couple and family
        therapy (a study that maps a column to ``system``) they are clients, the partners
        or members of a family: the ``patient`` column is "Client", the person-mean parts
        read "within-client (deviation from the client's own mean)" and "client's mean over
        sessions", and the questions speak of clients.

    Raises
    ------
    ValueError
        ``person`` is not 'patient' or 'client'.

    Examples
    --------
    >>> labels = Labels(arms={"tau": "usual care"}, levels={"condition": ["tau", "fit"]})
    >>> labels.term("session:C(condition)[T.tau]")
    'Session × usual care vs fit'
    >>> labels.variable("off_track"), labels.variable("not_a_code")
    ('Not on track', 'not_a_code')
    """

    variables: Mapping[str, str] = field(default_factory=dict)
    instruments: Mapping[str, str] = field(default_factory=dict)
    arms: Mapping[str, str] = field(default_factory=dict)
    informants: Mapping[str, str] = field(default_factory=dict)
    subscales: Mapping[str, str] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)
    alliance: str | None = None
    outcome: str | None = None
    levels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    person: str = "patient"

    def __post_init__(self) -> None:
        """Check :attr:`person`."""
        if self.person not in PERSONS:
            raise ValueError(f"`person` must be 'patient' or 'client'; got {self.person!r}.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls, study_config: Mapping[str, Any], instruments: Iterable[Any] | None = None
    ) -> Labels:
        """Labels of one study, from its config block and its instruments.

        Parameters
        ----------
        study_config : mapping
            The study's block of ``config.yaml`` (``measures``, optionally ``report.labels``
            with ``variables``, ``instruments``, ``arms`` and ``informants``, and ``read.labels``,
            whose canonical ``condition`` and ``informant`` values are the known levels).
        instruments : iterable of Instrument, optional
            The study's instruments; by default loaded from ``measures.instruments`` (with
            the study's own definitions).

        Returns
        -------
        Labels

        Raises
        ------
        TypeError
            When a ``labels`` entry is not a mapping of code to a non-empty string.

        Examples
        --------
        >>> study = {"measures": {"instruments": ["srs", "phq9"], "alliance": "srs_total",
        ...                       "outcome": "phq9_total"},
        ...          "report": {"labels": {"arms": {"fit": "Feedback-informed treatment"}}}}
        >>> labels = Labels.from_config(study)
        >>> labels.variable("outcome_next"), labels.arm("fit")
        ('PHQ-9 total at the next session', 'Feedback-informed treatment')
        """
        if not isinstance(study_config, Mapping):
            raise TypeError(
                f"`study_config` must be a study's config block (a mapping); "
                f"got {type(study_config).__name__}."
            )
        section = (study_config.get("report") or {}).get("labels") or {}
        if not isinstance(section, Mapping):
            raise TypeError(f"`report.labels` must be a mapping; got {type(section).__name__}.")
        unknown = sorted(set(section) - {"variables", "instruments", "arms", "informants"})
        if unknown:
            raise KeyError(
                f"`report.labels` has no key {unknown[0]!r}; keys are 'variables', 'instruments', "
                f"'arms' and 'informants'."
            )
        measures = study_config.get("measures") or {}
        if instruments is None:
            instruments = _study_instruments(measures)
        own = _check_mapping(section.get("instruments"), "instruments")
        abbreviations: dict[str, str] = {}
        variables: dict[str, str] = {}
        subscales: dict[str, str] = {}
        names: dict[str, str] = {}
        for inst in instruments:
            short = own.get(inst.id) or abbreviation(
                inst.name, str(inst.definition.get("version") or "")
            )
            abbreviations[inst.id] = short
            names[short] = inst.name
            variables[f"{inst.id}_total"] = f"{short} total"
            for name in inst.subscales:
                spec = (inst.definition.get("subscales") or {}).get(name) or {}
                label = spec.get("label") if isinstance(spec, Mapping) else None
                words = lower_first(label) if label else f"{name.replace('_', ' ')} subscale"
                subscales[f"{inst.id}_{name}"] = f"{short} {words}"
        variables.update(_check_mapping(section.get("variables"), "variables"))
        levels: dict[str, list[str]] = {}
        for factor in ("condition", "informant"):
            mapped = ((study_config.get("read") or {}).get("labels") or {}).get(factor) or {}
            found = {str(v) for v in mapped.values()}
            key = "arms" if factor == "condition" else "informants"
            found |= set(_check_mapping(section.get(key), key))
            if found:
                levels[factor] = sorted(found)
        roles = ((study_config.get("read") or {}).get("labels") or {}).get("role") or {}
        if roles:  # a couples or family study: its roles (partner_a, partner_b, mother ...)
            levels["role"] = sorted({str(v) for v in roles.values()})
        columns = (study_config.get("read") or {}).get("columns") or {}
        mapped = set(map(str, columns.values())) if isinstance(columns, Mapping) else set()
        return cls(
            variables=variables,
            instruments={**abbreviations, **own},
            arms=_check_mapping(section.get("arms"), "arms"),
            informants=_check_mapping(section.get("informants"), "informants"),
            subscales=subscales,
            names=names,
            alliance=measures.get("alliance"),
            outcome=measures.get("outcome"),
            levels=levels,
            person="client" if "system" in mapped else "patient",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-type record (JSON- and Snakemake-params-ready); :meth:`from_dict` reads it.

        Examples
        --------
        >>> Labels.from_dict(Labels(alliance="srs_total").to_dict()).alliance
        'srs_total'
        """
        return {
            "variables": dict(sorted(self.variables.items())),
            "instruments": dict(sorted(self.instruments.items())),
            "arms": dict(sorted(self.arms.items())),
            "informants": dict(sorted(self.informants.items())),
            "subscales": dict(sorted(self.subscales.items())),
            "names": dict(sorted(self.names.items())),
            "alliance": self.alliance,
            "outcome": self.outcome,
            "levels": {k: list(v) for k, v in sorted(self.levels.items())},
            "person": self.person,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | Labels | None) -> Labels:
        """Rebuild labels from :meth:`to_dict`'s record (None gives the defaults)."""
        if record is None:
            return cls()
        if isinstance(record, Labels):
            return record
        if not isinstance(record, Mapping):
            raise TypeError(
                f"`record` must be a mapping from Labels.to_dict(); got {type(record).__name__}."
            )
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(record) - allowed)
        if unknown:
            raise KeyError(f"`record` has no field {unknown[0]!r}; fields are {sorted(allowed)}.")
        return cls(**dict(record))

    # ------------------------------------------------------------------ single labels
    def arm(self, level: Any) -> str:
        """Label of an arm (a level of ``condition``), as it reads inside a sentence.

        Examples
        --------
        >>> Labels().arm("tau"), Labels().arm("ROM_feedback")
        ('treatment as usual', 'ROM feedback')
        """
        code = str(level)
        return self.arms.get(code) or _ARMS.get(code) or code.replace("_", " ")

    def informant(self, level: Any) -> str:
        """Label of an informant (a level of ``informant``).

        Examples
        --------
        >>> Labels(informants={"observer": "independent observer"}).informant("observer")
        'independent observer'
        >>> Labels().informant("partner_a")
        'partner a'
        """
        code = str(level)
        return self.informants.get(code) or code.replace("_", " ")

    def level(self, factor: str, level: Any) -> str:
        """Label of *level* of the categorical column *factor* (arms, informants, others)."""
        if factor == "condition":
            return self.arm(level)
        if factor == "informant":
            return self.informant(level)
        if factor == "role":
            return self.role(level)
        return self.variables.get(f"{factor}={level}") or str(level).replace("_", " ")

    def role(self, level: Any) -> str:
        """Label of a client's role in a couple or family (a level of ``role``).

        Examples
        --------
        >>> Labels().role("partner_b"), Labels().role("step_parent")
        ('partner B', 'step parent')
        """
        code = str(level)
        return self.variables.get(f"role={code}") or _ROLES.get(code) or code.replace("_", " ")

    def _role_of(self, name: str) -> str:
        """The known role whose :func:`identifier` is *name* (a ``role_<name>`` column)."""
        for level in self.levels.get("role") or ():
            if _name_of(level) == name:
                return str(level)
        return name

    def system_word(self) -> str:
        """What a ``system`` is in this study: "couple", "family" or "couple or family".

        A couple when the known roles (``levels["role"]``, from ``read.labels.role``) are
        the two partners', a family when there are others, "couple or family" when the
        roles are not known.

        Examples
        --------
        >>> Labels(levels={"role": ["partner_a", "partner_b"]}).system_word()
        'couple'
        >>> Labels(levels={"role": ["child", "father", "mother"]}).system_word()
        'family'
        >>> Labels().system_word()
        'couple or family'
        """
        roles = {_name_of(r) for r in self.levels.get("role") or ()}
        if not roles:
            return "couple or family"
        return "couple" if roles <= set(_ROLES) else "family"

    def instrument(self, instrument_id: str) -> str:
        """Abbreviation of an instrument by id ("WAI-SR" for ``wai_sr``)."""
        return self.instruments.get(instrument_id) or instrument_id

    def group(self, name: str) -> str:
        """Label of a grouping factor of a model's random part ("Therapist")."""
        return self.variable(name)

    def variable(self, column: str) -> str:
        r"""Label of a column: config first, then scores, fixed names and derived suffixes.

        The label starts with a capital letter (unless it starts with an abbreviation);
        :func:`lower_first` reads it inside a sentence. An unknown code is returned as it
        is, so a missing label shows in the output rather than being guessed.

        Examples
        --------
        >>> labels = Labels(
        ...     variables={"wai_sr_total": "WAI-SR total", "ors_total": "ORS total"},
        ...     alliance="wai_sr_total", outcome="ors_total",
        ...     subscales={"wai_sr_task": "WAI-SR agreement on tasks"},
        ... )
        >>> labels.variable("alliance_between")
        'WAI-SR total, patient mean'
        >>> labels.variable("outcome_lag2")
        'ORS total two sessions earlier'
        >>> labels.variable("alliance_task_between")
        'WAI-SR agreement on tasks, patient mean'
        >>> labels.variable("alliance_therapist_mean")
        'WAI-SR total, therapist mean'
        >>> labels.variable("alliance_rater_therapist_between")
        'WAI-SR total (therapist-rated), patient mean'
        >>> labels.variable("modality_video_between")
        'Video session, patient mean'
        >>> Labels(arms={"tau": "usual care"}, levels={"condition": ["feedback", "tau"]}).variable(
        ...     "feedback")
        'Feedback arm (vs usual care)'
        """
        column = str(column)
        if column in self.variables:
            return self.variables[column]
        if column == "feedback" and "feedback" in self.levels.get("condition", ()):
            # the binary presets' 0/1 arm column, against the study's other arm(s)
            others = [str(v) for v in self.levels["condition"] if str(v) != "feedback"]
            versus = self.arm(others[0]) if len(others) == 1 else "the other arms"
            return f"{upper_first(self.arm('feedback'))} arm (vs {versus})"
        if column == "system":
            return upper_first(self.system_word())
        if column == "role" and self.levels.get("role"):
            return f"Role in the {self.system_word()}"
        if column == "patient":
            return upper_first(self.person)
        if column in FIXED_VARIABLES:
            return FIXED_VARIABLES[column]
        if column in self.subscales:
            return self.subscales[column]
        if column == "alliance":
            return self.variable(self.alliance) if self.alliance else "Alliance"
        if column == "outcome":
            return self.variable(self.outcome) if self.outcome else "Outcome"
        if column == "early_alliance":
            return f"{self.variable('alliance')}, mean of the first sessions"
        couple = self._couple_variable(column)
        if couple is not None:
            return couple
        lag = _LAG.match(column)
        if lag:
            n = int(lag.group("n") or 1)
            base = lag.group("base")
            if lag.group("kind") == "lag":
                when = " at the previous session" if n == 1 else f" {_words(n)} sessions earlier"
            else:
                when = " at the next session" if n == 1 else f" {_words(n)} sessions later"
            for suffix, words in SUFFIXES:
                if base.endswith(suffix) and len(base) > len(suffix):
                    return self.variable(base[: -len(suffix)]) + when + self._suffix(words)
            return self.variable(base) + when
        for suffix, words in SUFFIXES:
            if column.endswith(suffix) and len(column) > len(suffix):
                stem = column[: -len(suffix)]
                if self._known(stem):
                    return self.variable(stem) + self._suffix(words)
        modality = re.match(r"^modality_(?P<level>[a-z_]+)$", column)
        if modality:  # a moderator's dummy: 1 for sessions of this modality
            level = modality.group("level")
            return f"{_MODALITIES.get(level, level.replace('_', ' ')).capitalize()} session"
        moderator = re.match(r"^moderator_(?P<name>.+)$", column)
        if moderator:  # a patient-level moderator column (moderator_<name>)
            return moderator.group("name").replace("_", " ").capitalize()
        rater = re.match(r"^alliance_rater_(?P<who>.+)$", column)
        if rater:
            who = self.informant(rater.group("who"))
            if " " in who:  # "significant other-rated" does not read; the possessive does
                return f"{who[:1].upper()}{who[1:]}'s alliance ({self.variable('alliance')})"
            return f"{self.variable('alliance')} ({who}-rated)"
        component = re.match(r"^alliance_(?P<c>[A-Za-z0-9]+)$", column)
        if component and self.alliance:
            instrument = self.alliance.rsplit("_total", 1)[0]
            score = f"{instrument}_{component.group('c')}"
            if score in self.subscales or score in self.variables:
                return self.variable(score)
        return column

    def _known(self, column: str) -> bool:
        return self.variable(column) != column

    def _suffix(self, words: str) -> str:
        """A suffix's words (:data:`SUFFIXES`) for this study's :attr:`person`."""
        if self.person == "patient":
            return words
        return _CLIENT_SUFFIXES.get(words) or words.replace("patient", self.person)

    def people(self) -> str:
        """The plural of :attr:`person`: "patients", or "clients" in couple and family therapy.

        Examples
        --------
        >>> Labels().people(), Labels(person="client").people()
        ('patients', 'clients')
        """
        return f"{self.person}s"

    def _couple_variable(self, column: str) -> str | None:
        r"""Label of a variable of couple and family therapy, or None for other columns.

        The columns are those of :func:`allianceflow.couples.system_variables`: the
        partner's alliance (``alliance_partner``: the other partner's, or the other members'
        mean in a family), the system's mean alliance (``alliance_system_mean``) and the
        split (``alliance_split``: the partners' absolute difference, the members' SD in a
        family), each with ``_within`` (partner: deviation from the partner's own mean;
        system mean and split: deviation from the system's own mean over sessions),
        ``_between`` and ``_lag``; the split's trend ``alliance_split_slope``; the early
        means of the patients table (``early_alliance_split``); the role dummies
        ``role_<level>``; ``system_members`` and ``system_row``.

        Examples
        --------
        >>> labels = Labels(variables={"srs_total": "SRS total"}, alliance="srs_total",
        ...                 levels={"role": ["partner_a", "partner_b"]})
        >>> labels.variable("alliance_partner_within_lag")
        "Partner's SRS total at the previous session, within-partner (deviation from the partner's own mean)"
        >>> labels.variable("alliance_split_between")
        "Split in SRS total between the partners, the couple's mean over sessions (deviation from the mean of couples)"
        >>> labels.variable("role_partner_b")
        'Partner B (vs partner A)'
        """  # noqa: E501
        unit = self.system_word()
        units = "couples or families" if unit == "couple or family" else unit + "s"
        if unit == "family":
            units = "families"
        role = re.fullmatch(r"role_(?P<level>\w+)", column)
        if role:
            level = self._role_of(role.group("level"))
            known = sorted(str(r) for r in self.levels.get("role") or () if str(r) != level)
            versus = lower_first(self.role(known[0])) if known else "the reference role"
            return upper_first(f"{self.role(level)} (vs {versus})")
        if column == "system_members":
            return f"Members of the {unit}"
        if column == "system_row":
            return f"One row per {unit} and session"
        match = re.fullmatch(
            r"(?P<early>early_)?alliance_(?P<what>partner|system_mean|split)"
            r"(?P<rest>_slope|(?:_within|_between)?(?:_lag)?)",
            column,
        )
        if not match:
            return None
        a = self.variable("alliance")
        what, rest = match.group("what"), match.group("rest")
        if what == "partner":
            base = f"Other members' mean {a}" if unit == "family" else f"Partner's {a}"
        elif what == "system_mean":
            base = f"{upper_first(unit)} mean {a}"
        elif unit == "couple":
            base = f"Split in {a} between the partners"
        elif unit == "family":
            base = f"Split in {a} among the members (SD)"
        else:
            base = f"Split in {a} (partners' absolute difference or members' SD)"
        if match.group("early"):
            return f"{base}, mean of the first sessions" if not rest else column
        if rest == "_slope":
            return f"{upper_first(_split_trend(base, unit))}" if what == "split" else column
        text = base + (" at the previous session" if rest.endswith("_lag") else "")
        if rest.startswith("_within"):
            text += (
                ", within-partner (deviation from the partner's own mean)"
                if what == "partner"
                else f", within the {unit} (deviation from its mean over sessions)"
            )
        elif rest.startswith("_between"):
            text += (
                ", partner's mean over sessions"
                if what == "partner"
                else f", the {unit}'s mean over sessions (deviation from the mean of {units})"
            )
        return text

    # ------------------------------------------------------------------ model terms
    def reference(self, factor: str) -> str | None:
        """Reference level of *factor* as patsy codes it (first in sorted order), if known."""
        found = self.levels.get(factor)
        return sorted(map(str, found))[0] if found else None

    def term(self, term: str) -> str:
        r"""A model term in words, interactions joined by "×", contrasts as "<level> vs <ref>".

        Parameters
        ----------
        term : str
            A fixed-effect name as patsy (and the model JSON) writes it, or a random-effect
            term such as ``(Intercept)``.

        Returns
        -------
        str
            The term in words, starting with a capital letter.

        Examples
        --------
        >>> labels = Labels(levels={"condition": ["feedback", "tau"]}, outcome="ors_total",
        ...                 variables={"ors_total": "ORS total"})
        >>> labels.term("C(condition)[T.tau]:off_track")
        'Treatment as usual vs feedback × not on track'
        >>> labels.term("session:C(condition, Treatment(reference='tau'))[T.feedback]")
        'Session × feedback vs treatment as usual'
        >>> labels.term("I(session ** 2)"), labels.term("(Intercept)")
        ('Session squared', 'Intercept')
        >>> labels.term("center(outcome_lag)")
        'ORS total at the previous session (centred)'
        """
        text = str(term).strip()
        if text in ("(Intercept)", "Intercept", "1"):
            return "Intercept"
        parts = _split_interaction(text)
        words = [self._factor(p) for p in parts]
        return upper_first(" × ".join([words[0], *(lower_first(w) for w in words[1:])]))

    def _factor(self, part: str) -> str:
        part = part.strip()
        contrast = _CONTRAST.match(part)
        if contrast:
            factor = contrast.group("factor") or contrast.group("bare")
            level = contrast.group("level").strip().strip("'\"")
            coding = contrast.group("coding") or ""
            given = _REFERENCE.search(coding)
            if given:
                ref: str | None = given.group("ref").strip()
            else:
                ref = self.reference(factor)
            name = self.level(factor, level)
            if contrast.group("t") is None:  # full-rank coding: the level itself
                return upper_first(name)
            if ref is None or ref == level:
                return upper_first(
                    f"{name} vs the reference level of {lower_first(self.variable(factor))}"
                )
            return upper_first(f"{name} vs {self.level(factor, ref)}")
        power = _POWER.match(part)
        if power:
            p = int(power.group("p"))
            word = _POWERS.get(p, f"to the power {p}")
            return f"{self.variable(power.group('x'))} {word}"
        function = _FUNCTION.match(part)
        if function and function.group("f") in _FUNCTIONS:
            return self.variable(function.group("x")) + _FUNCTIONS[function.group("f")]
        return self.variable(part)

    def terms(self, terms: Iterable[str]) -> list[str]:
        """:meth:`term` of each of *terms*."""
        return [self.term(t) for t in terms]

    # ------------------------------------------------------------------ questions
    def random_part(self, formula: str) -> str:
        """The random part of an lme4 formula in words.

        Examples
        --------
        >>> Labels().random_part("y ~ x + (1 | therapist) + (1 + session | patient)")
        'random intercepts for therapists; random intercepts and session slopes for patients'
        >>> Labels().random_part("y ~ x + (0 + session || patient)")
        'random session slopes for patients'
        """
        parts = []
        for lhs, _, group in _RANDOM.findall(str(formula)):
            effects = [e.strip() for e in lhs.split("+") if e.strip()]
            intercept = "0" not in effects and "-1" not in effects
            slopes = [lower_first(self.variable(e)) for e in effects if e not in ("0", "1", "-1")]
            what = (["intercepts"] if intercept else []) + (
                [f"{' and '.join(slopes)} slopes"] if slopes else []
            )
            groups = " within ".join(
                _plural(lower_first(self.variable(g.strip()))) for g in group.split("/")
            )
            parts.append(f"random {' and '.join(what)} for {groups}")
        return "; ".join(parts)

    def question(self, result: Mapping[str, Any], *, random: bool = True) -> str:
        r"""The research question a fitted model answers, in words (sentence case).

        Read from the model's response and fixed terms (the presets of
        :func:`allianceflow.models.preset_formula` each have their own wording; any other
        model is "<response> predicted by <terms>"), followed by its random part in
        parentheses, so that two models of one question differ in their titles. A
        moderated model adds ", moderated by <moderator>" (its record's ``moderation``), a
        model fitted to a subgroup ", in patients <subgroup>" (its record's ``rows``).

        This is the one wording of a model's question: the summary's headings
        (:func:`allianceflow.summary.question_of`), the forest plots' titles and the model
        tables' titles all read it.

        Parameters
        ----------
        result : mapping
            A fitted model's record (``formula`` and ``fixed``; optionally ``moderation`` and
        ``rows``), the JSON the fit stage writes.
        random : bool
            Add the random part in parentheses (False for a short label).

        Returns
        -------
        str

        Examples
        --------
        >>> labels = Labels(variables={"wai_sr_total": "WAI-SR total", "ors_total": "ORS total"},
        ...                 alliance="wai_sr_total", outcome="ors_total")
        >>> q = labels.question({
        ...     "formula": "outcome ~ alliance_within_lag + alliance_between + session"
        ...                " + (1 | therapist) + (1 | patient)",
        ...     "fixed": [{"term": t} for t in
        ...               ["Intercept", "alliance_within_lag", "alliance_between", "session"]]})
        >>> print(q.replace(" (", "\n("))
        WAI-SR total within and between patients predicting ORS total
        (random intercepts for therapists; random intercepts for patients)
        """
        formula = str(result.get("formula", ""))
        response = formula.split("~")[0].strip() or "outcome"
        y = lower_first(self.variable(response))
        terms = [f["term"] for f in result.get("fixed", []) if f["term"] != "Intercept"]
        parts = {p.strip() for t in terms for p in _split_interaction(t)}
        a = lower_first(self.variable("alliance"))
        time_only = parts and parts <= {"session", "log_session", "I(session ** 2)", "I(session^2)"}
        components = sorted(
            {
                m.group(1)
                for p in parts
                if (m := re.match(r"^alliance_([A-Za-z0-9]+)_within_lag$", p))
                and m.group(1) not in ("within", "rater")
            }
        )
        patient_level = response in _PATIENT_RESPONSES
        couple = self._couple_question(parts, a, y)
        if couple:
            text = couple
        elif patient_level and "feedback" in parts:
            text = f"{y} by arm" + (" and on-track status" if "off_track" in parts else "")
            text += self._adjusting(parts - {"feedback", "off_track"})
        elif patient_level and "early_alliance" in parts:
            text = f"early {a} (mean of the first sessions) predicting {y}"
            text += self._adjusting(parts - {"early_alliance"})
        elif (
            any(p.startswith(("C(condition", "condition[")) for p in parts) and "off_track" in parts
        ):
            text = f"change in {y} over sessions by arm and on-track status"
        elif "ruptures_before" in parts:
            text = f"detected alliance ruptures and their repair predicting {y}"
        elif "alliance_therapist_mean" in parts:
            text = f"therapists' and {self.people()}' contributions to the {a}–{y} relation"
        elif len(components) > 1:
            instrument = (self.alliance or "alliance").rsplit("_total", 1)[0]
            text = (
                f"{self.instrument(instrument)} subscales within and between {self.people()} "
                f"predicting {y}"
            )
        elif any(p.startswith("alliance_rater_") for p in parts):
            who = sorted(
                {
                    self.informant(m.group(1))
                    for p in parts
                    if (m := re.match(r"^alliance_rater_(.+?)_(?:within_lag|between)$", p))
                }
            )
            text = f"alliance rated by {' and '.join(who)} predicting {y}"
        elif any(p.startswith("alliance_within") for p in parts) and "alliance_between" in parts:
            text = f"{a} within and between {self.people()} predicting {y}"
            if "alliance_within_detrended_lag" in parts:
                text += ", detrended"
            if "outcome_lag" in parts:
                text += f", adjusting for {lower_first(self.variable('outcome_lag'))}"
        elif time_only:
            shape = (
                " (log time)"
                if "log_session" in parts
                else (" (quadratic)" if len(parts) > 1 else "")
            )
            text = f"change in {y} over sessions{shape}"
        else:
            text = f"{y} predicted by " + "; ".join(lower_first(self.term(t)) for t in terms)
        moderator = (result.get("moderation") or {}).get("moderator")
        if moderator:
            text += f", moderated by {lower_first(self.variable(moderator))}"
        text += self._subgroup(result.get("rows") or {})
        part = self.random_part(formula) if random else ""
        return upper_first(text + (f" ({part})" if part else ""))

    def _adjusting(self, covariates: Iterable[str]) -> str:
        """Return ", adjusting for <covariates>" in words ("" for none)."""
        named = [lower_first(self.term(c)) for c in sorted(covariates)]
        return f", adjusting for {' and '.join(named)}" if named else ""

    def _subgroup(self, rows: Mapping[str, Any]) -> str:
        """The rows a model was fitted to (a record's ``rows``), e.g. ", patients not on track"."""
        said = []
        for column, value in sorted(rows.items()):
            if column == "off_track" and value in (0, 1):
                said.append("not on track" if value == 1 else "on track")
            else:
                said.append(f"{lower_first(self.variable(column))} = {value:g}")
        return f", in {self.people()} {' and '.join(said)}" if said else ""

    def _couple_question(self, parts: set[str], a: str, y: str) -> str | None:
        """The question of a couples preset (allianceflow.models.preset_formula), or None."""
        unit = self.system_word()
        members = "partners" if unit == "couple" else "members"
        if any(p.startswith("alliance_partner_") for p in parts):
            other = "other members'" if unit == "family" else "partner's"
            text = f"own and {other} {a} predicting {y} (actor and partner effects)"
            if any(p.startswith("role_") for p in parts):
                text = text[: -len(")")] + ", by role)"
            return text
        if any(p.startswith("alliance_split_") for p in parts):
            return f"{unit} mean {a} and the split between the {members} predicting {y}"
        if "early_alliance_split" in parts:
            return f"early split in {a} between the {members} predicting {y}"
        return None


#: Responses of the patient-level presets (one row per patient: binomial and Poisson GLMMs).
_PATIENT_RESPONSES = frozenset({"deteriorated", "improved", "dropout", "sessions_attended"})


def _plural(noun: str) -> str:
    """The plural of a grouping factor's name: "patients", "families", "couples or families".

    Examples
    --------
    >>> [_plural(n) for n in ["patient", "family", "couple or family", "day"]]
    ['patients', 'families', 'couples or families', 'days']
    """
    if " or " in noun:
        return " or ".join(_plural(part) for part in noun.split(" or "))
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _words(n: int) -> str:
    return _WORDS.get(n, str(n))


def _split_trend(split: str, unit: str) -> str:
    """The split's linear trend over sessions in words (``alliance_split_slope``)."""
    return f"change in the {lower_first(split)} per session (the {unit}'s linear trend)"


def _split_interaction(term: str) -> list[str]:
    """Split a patsy term at the ``:`` that are not inside brackets or quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(term):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(term[start:i])
            start = i + 1
    parts.append(term[start:])
    return parts


def _study_instruments(measures: Mapping[str, Any]) -> list[Any]:
    from .instruments import load_instrument

    specs = measures.get("instruments") or {}
    items = specs.items() if isinstance(specs, Mapping) else ((name, None) for name in specs)
    out = []
    for name, spec in items:
        own_definition = isinstance(spec, Mapping) and "items" in spec
        out.append(
            load_instrument(
                spec if own_definition else name, overrides=None if own_definition else spec
            )
        )
    return out
