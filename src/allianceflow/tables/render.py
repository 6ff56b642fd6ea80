"""Render a :class:`~allianceflow.tables.table.Table` as Markdown, HTML, LaTeX or Word.

Nothing in any format depends on the clock: the ``.docx`` zip members carry a fixed
1980-01-01 timestamp and fixed core properties.
"""

from __future__ import annotations

import html
import io as _io
import re
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from .table import Table

__all__ = [
    "render_markdown",
    "render_html",
    "render_latex",
    "render_docx",
    "write_table_files",
    "STATISTICAL_SYMBOLS",
    "symbol_spans",
]

#: Statistical symbols printed in italics in HTML, LaTeX and Word (APA 7, 6.45–6.46: Latin
#: letters used as statistical symbols are italic; abbreviations such as CI, ICC, AIC and
#: Greek letters are not).
STATISTICAL_SYMBOLS = ("SE", "SD", "df", "M", "N", "n", "b", "t", "z", "p", "r", "g", "k", "F", "d")
_SYMBOL = re.compile(
    r"(?<![\w.\-−'’/])("
    + "|".join(STATISTICAL_SYMBOLS)
    + r"|R(?=²))(?=²|(?![\w\-]))"  # R only as R² (the letter alone also names software)
)


def symbol_spans(text: str) -> list[tuple[str, bool]]:
    """Split *text* into runs, marking the statistical symbols to print in italics.

    Examples
    --------
    >>> symbol_spans("b (SE)")
    [('b', True), (' (', False), ('SE', True), (')', False)]
    >>> symbol_spans("95% CI, R², Model 2 p")
    [('95% CI, ', False), ('R', True), ('², Model 2 ', False), ('p', True)]
    """
    out: list[tuple[str, bool]] = []
    last = 0
    for match in _SYMBOL.finditer(text):
        if match.start() > last:
            out.append((text[last : match.start()], False))
        out.append((match.group(1), True))
        last = match.end()
    if last < len(text):
        out.append((text[last:], False))
    return out


#: Fixed timestamp of every .docx zip member and core property (the zip format's epoch).
_EPOCH = (1980, 1, 1, 0, 0, 0)
_FIXED_DATE = datetime(2000, 1, 1, tzinfo=UTC)


def render_markdown(table: Table) -> str:
    """Render *table* as Markdown: bold title, pipe table, italic *Note.*."""
    body = table.body.copy()
    first = body.columns[0]
    for i in table.sections:
        body.iloc[i, 0] = f"*{body.iloc[i, 0]}*"
    head = f"**{table.label}**\n\n*{table.title}*" if table.label else f"**{table.title}**"
    text = f"{head}\n\n" + body.to_markdown(index=False, disable_numparse=True) + "\n"
    if table.note:
        text += f"\n*Note.* {table.note}\n"
    del first
    return text


_HTML_STYLE = (
    "body{font-family:'DejaVu Sans',Arial,sans-serif;font-size:10pt;margin:2em;}"
    "table{border-collapse:collapse;}"
    "caption{text-align:left;padding-bottom:.5em;}"
    "thead th{border-top:1.5px solid #000;border-bottom:1px solid #000;padding:.25em .6em;"
    "text-align:center;}"
    "tbody td{padding:.15em .6em;text-align:center;}"
    "tbody td:first-child,thead th:first-child{text-align:left;}"
    "tbody tr:last-child td{border-bottom:1.5px solid #000;}td.section{font-style:italic;}"
    "p.note{max-width:50em;}"
)


def _html_symbols(text: str) -> str:
    return "".join(
        f"<em>{html.escape(t)}</em>" if italic else html.escape(t)
        for t, italic in symbol_spans(str(text))
    )


def render_html(table: Table) -> str:
    """Render *table* as a standalone HTML5 page.

    APA rules: the number in bold above the italic title, lines above and below the header
    and under the last row only, statistical symbols in italics (:func:`symbol_spans`).
    """
    e = html.escape
    s = _html_symbols
    caption = (
        f"<strong>{e(table.label)}</strong><br><em>{e(table.title)}</em>"
        if table.label
        else e(table.title)
    )
    ncol = len(table.body.columns)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{e(' '.join(filter(None, [table.label, table.title])))}</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
        f'<table id="{e(table.name)}">',
        f"<caption>{caption}</caption>",
        "<thead><tr>"
        + "".join(f"<th>{s(str(c))}</th>" for c in table.body.columns)
        + "</tr></thead>",
        "<tbody>",
    ]
    for i, row in enumerate(table.body.itertuples(index=False)):
        if i in table.sections:
            lines.append(f'<tr><td class="section" colspan="{ncol}">{s(row[0])}</td></tr>')
        else:
            lines.append("<tr>" + "".join(f"<td>{s(v)}</td>" for v in row) + "</tr>")
    lines += ["</tbody>", "</table>"]
    if table.note:
        lines.append(f'<p class="note"><em>Note.</em> {s(table.note)}</p>')
    lines += ["</body>", "</html>"]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "α": r"$\alpha$",
    "ω": r"$\omega$",
    "²": r"\textsuperscript{2}",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "|": r"\textbar{}",
    "±": r"$\pm$",
    "τ": r"$\tau$",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _tex_symbols(text: str) -> str:
    return "".join(
        f"\\textit{{{_tex(t)}}}" if italic else _tex(t) for t, italic in symbol_spans(str(text))
    )


def render_latex(table: Table) -> str:
    r"""Render *table* as a LaTeX float.

    Needs ``\usepackage{booktabs, threeparttable}``, and ``pdflscape`` for a wide table
    (:attr:`Table.wide`), which is set on a landscape page. A numbered table keeps its
    number (``\thetable`` is set inside the float, so ``\ref`` gives it too); statistical
    symbols are in italics (:func:`symbol_spans`).
    """
    ncol = len(table.body.columns)
    spec = "l" + "c" * (ncol - 1)
    packages = "booktabs,threeparttable" + (",pdflscape" if table.wide else "")
    lines = [f"% {table.name}: generated by allianceflow; needs \\usepackage{{{packages}}}"]
    if table.wide:
        lines.append(r"\begin{landscape}")
    lines += [r"\begin{table}[htbp]", r"\centering"]
    if table.number is not None:
        lines.append(f"\\renewcommand{{\\thetable}}{{{table.number}}}")
    lines += [
        r"\begin{threeparttable}",
        f"\\caption{{{_tex(table.title)}}}",
        f"\\label{{tab:{table.name}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_tex_symbols(c) for c in table.body.columns) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(table.body.itertuples(index=False)):
        if i in table.sections:
            lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{_tex(row[0])}}}}} \\\\")
        else:
            cells = [
                _tex_symbols(v.strip())
                if j
                else (
                    r"\quad " + _tex_symbols(v.strip()) if v.startswith("  ") else _tex_symbols(v)
                )
                for j, v in enumerate(row)
            ]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.note:
        lines += [
            r"\begin{tablenotes}[flushleft]",
            r"\small",
            f"\\item \\textit{{Note.}} {_tex_symbols(table.note)}",
            r"\end{tablenotes}",
        ]
    lines += [r"\end{threeparttable}", r"\end{table}"]
    if table.wide:
        lines.append(r"\end{landscape}")
    return "\n".join(lines) + "\n"


def _set_borders(cell, **edges: str) -> None:
    """Set cell borders, e.g. ``top="12"`` (eighths of a point, single line)."""
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    tc_pr = cell._tc.get_or_add_tcPr()
    borders = tc_pr.find(qn("w:tcBorders"))
    if borders is None:
        borders = OxmlElement("w:tcBorders")
        tc_pr.append(borders)
    for edge in ("top", "bottom"):
        if edge in edges:
            element = OxmlElement(f"w:{edge}")
            element.set(qn("w:val"), "single")
            element.set(qn("w:sz"), edges[edge])
            element.set(qn("w:space"), "0")
            element.set(qn("w:color"), "000000")
            borders.append(element)


def _fixed_zip(raw: bytes) -> bytes:
    """Rewrite a zip with every member dated 1980-01-01, fixed attributes, no compression.

    Members are stored (deflate output can differ between zlib builds), in the same order.
    """
    out = _io.BytesIO()
    with (
        zipfile.ZipFile(_io.BytesIO(raw)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst,
    ):
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=_EPOCH)
            fixed.compress_type = zipfile.ZIP_STORED
            fixed.external_attr = 0o600 << 16
            fixed.create_system = 0
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()


def _docx_runs(paragraph, text: str) -> None:
    """Add *text* to a Word paragraph, statistical symbols in italics."""
    for part, italic in symbol_spans(text):
        run = paragraph.add_run(part)
        if italic:
            run.italic = True


def render_docx(table: Table) -> bytes:
    """Render *table* as a Word document (.docx bytes), APA layout, the same bytes every run.

    The document's core properties are fixed (author and last editor "allianceflow",
    created and modified 2000-01-01, revision 1) and every zip member is dated 1980-01-01,
    so the same table gives the same bytes; members are stored uncompressed, as deflate
    output differs between zlib builds (python-docx would otherwise stamp the time
    of the run in both places).
    """
    import docx
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.shared import Pt

    document = docx.Document()
    props = document.core_properties
    props.author = "allianceflow"
    props.last_modified_by = "allianceflow"
    props.title = table.title
    props.created = _FIXED_DATE.replace(tzinfo=None)
    props.modified = _FIXED_DATE.replace(tzinfo=None)
    props.last_printed = _FIXED_DATE.replace(tzinfo=None)
    props.revision = 1
    props.comments = ""
    props.keywords = ""
    style = document.styles["Normal"]
    style.font.name = "Times New Roman"
    style.font.size = Pt(11)
    if table.wide:
        from docx.enum.section import WD_ORIENT

        section = document.sections[0]
        section.orientation = WD_ORIENT.LANDSCAPE
        section.page_width, section.page_height = section.page_height, section.page_width
    if table.label:
        document.add_paragraph().add_run(table.label).bold = True
    title = document.add_paragraph()
    title.add_run(table.title).italic = True
    body = table.body
    grid = document.add_table(rows=len(body) + 1, cols=len(body.columns))
    # each row's cells once (Table.cell(i, j) walks every cell of the table at each call)
    cells = [grid_row.cells for grid_row in grid.rows]
    for j, heading in enumerate(body.columns):
        cell = cells[0][j]
        _docx_runs(cell.paragraphs[0], str(heading))
        _set_borders(cell, top="12", bottom="8")
        if j:
            cell.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.CENTER
    last = len(body)
    for i, row in enumerate(body.itertuples(index=False), start=1):
        for j, value in enumerate(row):
            cell = cells[i][j]
            if (i - 1) in table.sections:
                if j == 0:
                    cell.paragraphs[0].add_run(value).italic = True
            else:
                _docx_runs(cell.paragraphs[0], value)
                if j:
                    cell.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.CENTER
            if i == last:
                _set_borders(cell, bottom="12")
    if table.note:
        note = document.add_paragraph()
        note.add_run("Note.").italic = True
        _docx_runs(note, f" {table.note}")
    raw = _io.BytesIO()
    document.save(raw)
    return _fixed_zip(raw.getvalue())


def write_table_files(table: Table, paths: Iterable[str | Path]) -> None:
    """Write *table* to each path in the format its suffix names, atomically.

    ``.csv`` is the numbers (``table.data``); ``.md``, ``.html``, ``.tex`` and ``.docx``
    are the rendered table.

    Raises
    ------
    ValueError
        A suffix other than those of :data:`TABLE_FORMATS`.
    """
    from ..io import atomic_path, write_table, write_text

    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".").lower()
        if fmt == "csv":
            write_table(table.data, path)
        elif fmt == "md":
            write_text(render_markdown(table), path)
        elif fmt == "html":
            write_text(render_html(table), path)
        elif fmt == "tex":
            write_text(render_latex(table), path)
        elif fmt == "docx":
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(render_docx(table))
        else:
            raise ValueError(
                f"`paths` must end in .csv, .md, .html, .tex or .docx; got {path.name!r}."
            )
