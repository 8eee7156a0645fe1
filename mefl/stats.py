"""Summaries over seeds for the reports: mean ± std, rounds to target, paired gaps and their tests."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from scipy.stats import binomtest, ttest_1samp

LAST_ROUNDS = 5  # a last-round number alone hides how much the final rounds swing


def mean_accuracy(results: dict[str, Any], kind: str, exit_name: str, last: int = 1) -> float | None:
    """Accuracy averaged over the run's last ``last`` rounds (None if one of them lacks it)."""
    values = [r.get(kind, {}).get(exit_name, {}).get("accuracy") for r in results["rounds"][-last:]]
    return None if not values or None in values else statistics.fmean(values)


def final_accuracy(results: dict[str, Any], kind: str, exit_name: str) -> float | None:
    return mean_accuracy(results, kind, exit_name, 1)


def mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def rounds_mean(values: list[int | None]) -> str:
    if not values:
        return "n/a"  # no completed runs of this variant
    reached = [v for v in values if v is not None]
    text = f"{statistics.fmean(reached):.1f}" if reached else "not reached"
    if reached and len(reached) < len(values):
        text += f" ({len(values) - len(reached)} of {len(values)} seeds never reached it)"
    return text


def paired_summary(gaps: Sequence[float]) -> str:
    """Mean ± std of the per-seed gaps ME − SE, how many favour ME, and two one-sided p-values
    for "ME ahead": the sign test (no assumption on the gaps' distribution; ties dropped) and the
    paired t-test (assumes roughly normal gaps). The gaps' own spread, not the two models' spreads
    added, is what a paired comparison is judged against."""
    n = len(gaps)
    std = statistics.stdev(gaps) if n > 1 else None
    text = f"{100 * statistics.fmean(gaps):+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
    ahead, untied = sum(g > 0 for g in gaps), sum(g != 0 for g in gaps)
    text += f", ME ahead in {ahead} of {n}"
    tests = []
    if untied:
        tests.append(f"sign test p = {binomtest(ahead, untied, 0.5, alternative='greater').pvalue:.3g}")
    if std:  # a t-test needs two gaps that differ
        tests.append(f"paired t-test p = {ttest_1samp(gaps, 0.0, alternative='greater').pvalue:.3g}")
    return text + (f" (one-sided {', '.join(tests)})" if tests else "")


def saving(me: list, se: list) -> str:
    me, se = [v for v in me if v is not None], [v for v in se if v is not None]
    if not me or not se:
        return "n/a"
    return f"{100 * (1 - statistics.fmean(me) / statistics.fmean(se)):.1f} %"


def megabytes(values: list) -> str:
    reached = [v for v in values if v is not None]
    return f"{statistics.fmean(reached) / 1e6:.1f}" if reached else "n/a"
