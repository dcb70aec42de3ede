"""Tables beside the markdown: the numbers as CSV, the formatted table as LaTeX (booktabs).

Pure: an :class:`ExportTable` in, text out; the writer puts the text in
``reports/<study>/<section>.csv`` and ``.tex``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.report.format import LATEX


@dataclass(frozen=True)
class ExportTable:
    numbers: pd.DataFrame  # one row per cell, in the units shown: the CSV
    latex: pd.DataFrame | None  # the table as LaTeX text (cells written with format.LATEX); None: CSV only
    caption: str = ""  # plain text


def to_csv(table: ExportTable) -> str:
    """The numbers, six significant digits (enough for any metric here; stable across runs)."""
    return table.numbers.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def to_latex(table: ExportTable) -> str | None:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``):
    the first column left-aligned, the others too (cells hold text such as ``84.0 $\\pm$ 0.3``)."""
    if table.latex is None:
        return None
    frame = table.latex.rename(columns={c: LATEX.text(str(c)) for c in table.latex.columns})
    styler = frame.style.hide(axis="index")
    return styler.to_latex(
        hrules=True,
        column_format="l" * len(frame.columns),
        caption=LATEX.text(table.caption) if table.caption else None,
        position="htbp",
    )
