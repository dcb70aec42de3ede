"""The report's opening section: each published claim the study tests, with its verdict.

Pure: verdicts (:mod:`bench.report.claims`) in, markdown lines and an exportable table out.
A study that declares no claim says so: its tables describe, they test nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pandas as pd

from bench.metrics import RUN_METRICS
from bench.report.claims import MAX_SEEDS, MIN_SEEDS, POWER, VERDICTS, Verdict
from bench.report.export import ExportTable
from bench.report.format import number, p_value
from bench.report.tables import markdown_table

FINDINGS_TABLE = "findings"  # the CSV's stem in the report's folder


def findings_lines(verdicts: Sequence[Verdict], alpha: float) -> list[str]:
    if not verdicts:
        return [
            "This study declares no published claim (`report.claims`): its tables describe the runs and test no "
            "expectation.",
            "",
        ]
    counts = Counter(v.verdict for v in verdicts)
    summary = ", ".join(f"{counts[k]} {k}" for k in VERDICTS if counts[k])
    level = f"{100 * (1 - alpha):g}%"
    rows = []
    for v in verdicts:
        digits = RUN_METRICS[v.claim.metric].digits
        effect = number(v.effect, digits, signed=v.claim.kind != "flat")
        if not math.isnan(v.low):
            effect += f" [{number(v.low, digits, signed=True)}, {number(v.high, digits, signed=True)}]"
        test = v.test + (f", {p_value(v.p)}" if not math.isnan(v.p) else "")
        rows.append({key: _cell(text) for key, text in {
            "claim": f"{v.claim.statement} (`{v.claim.name}`)",
            "source": v.claim.source,
            "verdict": f"**{v.verdict}**" + (f": {v.reason}" if v.reason else ""),
            f"effect [{level} CI]": f"{effect}<br>{v.effect_text}",
            "test": test,
            "n": str(v.n) + (f" ({v.at_chance} diverged, at chance)" if v.at_chance else ""),
            "seeds for a decision": _needed(v),
        }.items()})
    lines = [
        f"{len(verdicts)} published claim{'s' if len(verdicts) != 1 else ''} tested: {summary}.",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
        f"A claim is *reproduced* when the {level} confidence interval of its effect lies entirely on the claimed "
        "side of its margin (a `flat` claim: every level's interval within ± the tolerance; a `count` claim: Fisher's "
        f"exact test significant at α = {alpha:g} in the claimed direction), *contradicted* when it lies entirely on "
        f"the other side, and *inconclusive* otherwise or on fewer than {MIN_SEEDS} seeds per cell. n: seeds in the "
        "fewest-seeded cell the claim reads (a `count` or `share` claim: of any configuration it pools; completed "
        "runs, a run collapsed to chance counting with its accuracy). "
        f"Seeds for a decision: per cell, for a test at α = {alpha:g} to decide with power {POWER:g} if the observed "
        "effect and spread were the true ones (a planning figure, not a promise). Each claim is tested on its own, "
        "not adjusted for the number of claims."
        + (" A diverged run counts at chance accuracy (1/classes) where a claim reads the accuracy of the network a "
           "run ends with: its training was lost, and leaving it out would judge a technique on its surviving seeds "
           "only. n says how many diverged runs a claim read so." if any(v.at_chance for v in verdicts) else ""),
        "",
    ]
    notes = [f"- `{v.claim.name}`: {v.claim.note}" for v in verdicts if v.claim.note]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return lines


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a claim's words may hold a pipe)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _needed(v: Verdict) -> str:
    if v.verdict != "inconclusive":
        return "—"
    if v.seeds_needed is None:
        return "not estimable" if v.n < 2 else "none would (no effect)"
    if v.seeds_needed > MAX_SEEDS:
        return f"> {MAX_SEEDS}"
    return str(v.seeds_needed)


def findings_table(verdicts: Sequence[Verdict]) -> ExportTable:
    numbers = pd.DataFrame(
        [
            {
                "claim": v.claim.name, "kind": v.claim.kind, "metric": v.claim.metric, "verdict": v.verdict,
                "effect": v.effect, "ci_low": v.low, "ci_high": v.high, "p": v.p, "n": v.n,
                "seeds_needed": v.seeds_needed, "diverged_at_chance": v.at_chance, "source": v.claim.source,
            }
            for v in verdicts
        ],
        columns=["claim", "kind", "metric", "verdict", "effect", "ci_low", "ci_high", "p", "n", "seeds_needed",
                 "diverged_at_chance", "source"],
    )
    return ExportTable(numbers, None, "Findings: the published claims the study tests")
