"""The reports' plots (PNG, matplotlib's Agg backend: no screen needed)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from mefl_app.server.run_folder import ACCURACY_KINDS

from .report_text import KIND_TITLES


def accuracy_plots(out: Path, runs: dict[str, dict[int, dict[str, Any]]], target: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    styles = {"me": "-", "se": "--"}
    for kind in ACCURACY_KINDS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, by_seed in sorted(runs.items()):
            exits = next(iter(by_seed.values()))["exit_names"]
            for e, exit_name in enumerate(exits):
                curves = [
                    [r[kind][exit_name]["accuracy"] for r in res["rounds"] if kind in r] for res in by_seed.values()
                ]
                length = min(len(c) for c in curves)
                mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
                ax.plot(
                    range(1, length + 1),
                    mean,
                    styles.get(variant, ":"),
                    color=f"C{e if variant == 'me' else 3}",
                    label=f"{'multi-exit' if variant == 'me' else 'single-exit'} {exit_name}",
                )
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:.2f}")
        ax.set(xlabel="round", ylabel="accuracy", title=KIND_TITLES[kind], ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="lower right")
        name = f"accuracy_{kind}.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels, data = [], []
    for variant, by_seed in sorted(runs.items()):
        for exit_name in next(iter(by_seed.values()))["exit_names"]:
            values = [
                acc
                for res in by_seed.values()
                for acc in res["rounds"][-1]["personalized"][exit_name]["per_client"].values()
            ]
            labels.append(f"{variant}\n{exit_name}")
            data.append(values)
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set(ylabel="personalized accuracy of one client", title="final per-client personalized accuracy (all seeds)")
    fig.tight_layout()
    fig.savefig(out / "per_client_spread.png", dpi=120)
    plt.close(fig)
    names.append("per_client_spread.png")
    return names


def early_exit_plot(out: Path, runs: dict[str, dict[str, Any]], exits: list[str], mflops: list[float]) -> str:
    """Accuracy against average forward MFLOPs: each run's threshold sweep and its fixed exits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, results) in enumerate(runs.items()):
        last = results["rounds"][-1]
        curve = last.get("global_local_early_exit")
        if not curve:
            continue
        ax.plot(curve["mflops_per_sample"], curve["accuracy"], "o-", color=f"C{i}", label=f"{name}: threshold sweep")
        fixed = [
            (mflops[e], last["global_local"][n]["accuracy"]) for e, n in enumerate(exits) if n in last["global_local"]
        ]
        ax.plot(*zip(*fixed), "s", color=f"C{i}", markerfacecolor="none", label=f"{name}: fixed exits")
    ax.set(
        xlabel="average forward MFLOPs per sample", ylabel="accuracy", title="early-exit inference: accuracy vs compute"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "early_exit.png", dpi=120)
    plt.close(fig)
    return "early_exit.png"


def seeds_label(runs: dict[str, dict[int, dict[str, Any]]], name: str) -> str:
    """A configuration's legend entry: its name, and its seeds when not every configuration has the
    same seeds (a campaign in progress), so that a mean over fewer seeds is not read as final."""
    if len({tuple(sorted(by_seed)) for by_seed in runs.values()}) == 1:
        return name
    return f"{name} (seeds {', '.join(map(str, sorted(runs[name])))})"


def method_plots(
    out: Path, runs: dict[str, dict[int, dict[str, Any]]], order: list[str], exits: list[str]
) -> list[str]:
    """Central accuracy per round at the deepest exit, per method (mean over seeds), and each
    method's final central accuracy per exit against its client training compute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(order):
        curves = [
            [r["central"][exits[-1]]["accuracy"] for r in res["rounds"] if "central" in r]
            for res in runs[name].values()
        ]
        length = min(len(c) for c in curves)
        if length:
            ax.plot(
                range(1, length + 1),
                [statistics.fmean(c[j] for c in curves) for j in range(length)],
                color=f"C{i}",
                label=seeds_label(runs, name),
            )
    ax.set(xlabel="round", ylabel=f"central accuracy, {exits[-1]}", title="accuracy per round (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_round.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "os^"
    for i, name in enumerate(order):
        results = list(runs[name].values())
        tflops = statistics.fmean(
            sum(sum(x.get("client_train_mflops", {}).values()) for x in r["rounds"]) / 1e6 for r in results
        )
        for e, exit_name in enumerate(exits):
            final = [r["rounds"][-1].get("central", {}).get(exit_name, {}).get("accuracy") for r in results]
            final = [v for v in final if v is not None]
            if final:
                ax.plot(
                    tflops,
                    statistics.fmean(final),
                    markers[e % 3],
                    color=f"C{i}",
                    label=f"{seeds_label(runs, name)} {exit_name}",
                )
    ax.set(
        xlabel="client training TFLOPs (whole run)",
        ylabel="central accuracy, last round",
        title="accuracy vs client compute",
    )
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_compute.png", dpi=120)
    plt.close(fig)
    return ["accuracy_per_round.png", "accuracy_vs_compute.png"]
