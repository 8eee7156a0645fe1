"""The study's comparison, multi-exit vs single-exit, as a campaign: run it, then report it.

    mefl study --task fmnist --seeds 0 1 2 --out results/study/fmnist
    mefl study --task har --seeds 0 1 2 --run-config conf/har-study.toml --out results/study/har

Each (variant, seed) is one run of the real app through Flower's simulation engine (a private
SuperLink, as ``flwr run .`` would use): multi-exit and single-exit share the seed and the shards
(``seed`` and ``partition-seed`` are both set to the seed). Completed runs are skipped and
stopped ones continued (see campaigns.py); the report is rewritten at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.common.config import parse_config_args

from .campaigns import VARIANTS, run_name


def configs_for(task: str, seeds: Sequence[int], variants: Sequence[str], run_config: str) -> dict[str, dict]:
    """ME and SE for every seed; a seed sets both ``seed`` and ``partition-seed``, so the two
    variants of a seed see identical shards and initial backbones."""
    overrides = parse_config_args([run_config]) if run_config else {}
    return {
        run_name(v, s): {**overrides, "task": task, "multi-exit": VARIANTS[v], "seed": s, "partition-seed": s}
        for s in seeds
        for v in variants
    }
