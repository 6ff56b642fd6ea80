"""Tables for people (Markdown, HTML, LaTeX, Word) and machines (CSV), the same bytes every run.

Every published table is a :class:`Table`: the unrounded numbers (``data``, written as CSV)
and their APA-style rendering (``body``, strings only) with a title and a note. The package
has one module per part:

- :mod:`~allianceflow.tables.table`: the :class:`Table` and :data:`TABLE_FORMATS`;
- :mod:`~allianceflow.tables.formatting`: APA numbers (:func:`format_number`, the one
  rounding helper, :func:`format_p`, :func:`format_r`) and :data:`DEFAULT_LABELS`;
- :mod:`~allianceflow.tables.model`: fitted multilevel models (:func:`model_table`,
  :func:`fixed_effects_table`, :func:`model_markdown`);
- :mod:`~allianceflow.tables.descriptive`: reliability, Table 1, intake correlations;
- :mod:`~allianceflow.tables.counts`: counts by arm (clinical significance, sudden gains,
  ruptures);
- :mod:`~allianceflow.tables.pooled`: the meta-analysis across studies, formatted like the
  study tables (:func:`meta_analysis_table`);
- :mod:`~allianceflow.tables.suppression`: small-cell suppression, primary and
  complementary, audited so that no hidden cell can be worked out (:class:`CellSuppression`);
- :mod:`~allianceflow.tables.render`: Markdown, standalone HTML, a LaTeX ``table`` float
  (booktabs + threeparttable), Word ``.docx``, and :func:`write_table_files`, which writes
  any of them by file suffix.

Examples
--------
>>> import pandas as pd
>>> from allianceflow import tables
>>> patients = pd.DataFrame({"patient": [f"p{i}" for i in range(12)],
...                          "condition": ["a"] * 6 + ["b"] * 6,
...                          "rc_category": ["recovered"] * 5 + ["unchanged"] * 7})
>>> t = tables.clinical_significance_table(patients, min_cell=3)
>>> print(tables.render_markdown(t).splitlines()[0])
**Reliable and Clinically Significant Change by Arm**
"""

from .binary import binary_effects_table, ratio_table
from .counts import clinical_significance_table, ruptures_table, sudden_gains_table
from .descriptive import intake_correlations, reliability_markdown, reliability_table, table1
from .formatting import DEFAULT_LABELS, format_number, format_p, format_r
from .model import fixed_effects_table, model_markdown, model_table, to_markdown
from .moderation import simple_slopes_table
from .pooled import few_studies_note, meta_analysis_table
from .render import render_docx, render_html, render_latex, render_markdown, write_table_files
from .suppression import CellSuppression
from .table import TABLE_FORMATS, Table, with_labels

__all__ = [
    "Table",
    "TABLE_FORMATS",
    "DEFAULT_LABELS",
    "format_number",
    "format_p",
    "format_r",
    "fixed_effects_table",
    "to_markdown",
    "model_markdown",
    "model_table",
    "reliability_markdown",
    "reliability_table",
    "table1",
    "intake_correlations",
    "clinical_significance_table",
    "sudden_gains_table",
    "ruptures_table",
    "render_markdown",
    "render_html",
    "render_latex",
    "render_docx",
    "write_table_files",
    "CellSuppression",
    "with_labels",
    "meta_analysis_table",
    "few_studies_note",
    "simple_slopes_table",
    "ratio_table",
    "binary_effects_table",
]
