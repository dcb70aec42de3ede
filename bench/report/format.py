"""Numbers and cells as text, for markdown and for LaTeX.

Cells are written once, with plain Unicode (±, −, Δ); a :class:`Style` turns that text
into markdown (``**bold**``, ``<br>``) or LaTeX (``\\textbf``, ``$\\pm$``, escaped).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.metrics import Metric

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {
    "±": r"$\pm$", "−": r"$-$", "Δ": r"$\Delta$", "×": r"$\times$", "<": r"$<$", ">": r"$>$",
    "≥": r"$\geq$", "≤": r"$\leq$", "–": "--", "α": r"$\alpha$", "·": r"$\cdot$", "²": r"$^2$",
}


def _latex(text: str) -> str:
    text = "".join(_LATEX_SPECIALS.get(c, c) for c in text)
    return "".join(_LATEX_SYMBOLS.get(c, c) for c in text)


def _markdown(text: str) -> str:
    return text.replace("|", r"\|")


@dataclass(frozen=True)
class Style:
    name: str
    text: Callable[[str], str]  # plain text → this format (escaped)
    bold: Callable[[str], str]  # formatted text → bold
    newline: str  # between the lines of one cell


MARKDOWN = Style("markdown", _markdown, lambda s: f"**{s}**", "<br>")
LATEX = Style("latex", _latex, lambda s: rf"\textbf{{{s}}}", "; ")


def number(value: float, digits: int, *, signed: bool = False) -> str:
    """``84.0``; signed: ``+1.3`` / ``−1.3`` (a true minus sign)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{abs(value):,.{digits}f}" if digits == 0 else f"{abs(value):.{digits}f}"
    if value < 0 and float(text.replace(",", "")) != 0:
        return "−" + text
    return ("+" if signed else "") + text


def p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def counts_notes(cell: Mapping[str, Any]) -> list[str]:
    """``1 of 3 collapsed`` (completed at chance: in the mean, but said), then what did not
    give a number: ``1 of 3 diverged``, ``1 of 3 not run``."""
    total = int(cell["total"])
    collapsed = cell.get("collapsed", 0)
    collapsed = int(collapsed) if collapsed is not None and collapsed == collapsed else 0  # NaN: not counted
    notes = [f"{collapsed} of {total} collapsed"] if collapsed else []
    notes += [f"{int(cell[o])} of {total} {o}" for o in ("diverged", "failed") if int(cell[o])]
    if int(cell["pending"]):
        notes.append(f"{int(cell['pending'])} of {total} not run")
    return notes


def format_cell(
    cell: Mapping[str, Any], metric: Metric, style: Style, *, best: bool = False, ci: bool = False
) -> str:
    """``**86.3 ± 0.4** [85.3, 87.3] (n=3)``; ``85.1 (n=2; 1 of 3 diverged)``; ``3 of 3 diverged``."""
    notes = counts_notes(cell)
    n = int(cell["n"])
    if n == 0:
        return style.text("; ".join(notes) or "—")
    scale, digits = metric.scale, metric.digits
    text = number(cell["mean"] * scale, digits)
    if n > 1:
        text += f" ± {number(cell['std'] * scale, digits)}"
    text = style.text(text)
    if best:
        text = style.bold(text)
    if ci and not math.isnan(cell.get("ci_low", math.nan)):
        text += style.text(f" [{number(cell['ci_low'] * scale, digits)}, {number(cell['ci_high'] * scale, digits)}]")
    return text + style.text(f" (n={n}{'; ' + '; '.join(notes) if notes else ''})")


def format_delta(cell: Mapping[str, Any], metric: Metric, style: Style, *, ci: bool = False, explain: bool = True) -> str:
    """The comparison with the baseline: ``Δ +1.3 [−0.2, +2.8] p=0.074``, ``*`` when
    significant; ``baseline``; ``Δ +0.4 (one pair, untested)``; empty without a number.
    ``explain=False`` leaves out why a difference is untested (when no cell of the table
    could be tested, the note under it says so once)."""
    if cell.get("is_baseline"):
        return style.text("baseline")
    if int(cell["n"]) == 0 or "delta" not in cell:
        return ""
    if not cell.get("has_baseline"):
        return style.text(f"Δ n/a ({cell['delta_note']})")
    if int(cell["pairs"]) == 0:
        return style.text(f"Δ n/a ({cell['delta_note']})")
    scale, digits = metric.scale, metric.digits
    text = f"Δ {number(cell['delta'] * scale, digits, signed=True)}"
    if ci and not math.isnan(cell["delta_low"]):
        text += f" [{number(cell['delta_low'] * scale, digits, signed=True)}, {number(cell['delta_high'] * scale, digits, signed=True)}]"
    if math.isnan(cell["p"]):
        return style.text(f"{text} ({cell['delta_note']})" if explain else text)
    text = style.text(f"{text} {p_value(cell['p_adjusted'])}")
    return text + (style.text("*") if cell["significant"] else "")
