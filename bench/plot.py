"""`--plot out.png`: one bar chart per workload (throughput, IQR as error bars) and compile times."""

from __future__ import annotations

COLORS = {"drug": "#d62728", "numpy": "#7f7f7f", "torch": "#1f77b4", "torch.compile": "#17becf", "jax": "#2ca02c"}


def write_plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, w) for name, w in report["workloads"].items() if any("time_s" in r for r in w["peers"].values())]
    has_compile = bool(report.get("compile"))
    if not panels and not has_compile:
        raise ValueError("nothing was timed, so there is nothing to plot")
    cols = max(len(panels), 1)
    rows = bool(panels) + has_compile
    fig = plt.figure(figsize=(max(3.6 * cols, 7), 3.8 * rows))
    grid = fig.add_gridspec(rows, cols)
    axes = [fig.add_subplot(grid[0, i]) for i in range(len(panels))]
    for ax, (name, w) in zip(axes, panels):
        timed = [(p, r) for p, r in w["peers"].items() if "time_s" in r]
        values = [r["throughput"] for _, r in timed]
        low = [v - r["throughput_p25_p75"][0] for v, (_, r) in zip(values, timed)]
        high = [r["throughput_p25_p75"][1] - v for v, (_, r) in zip(values, timed)]
        labels = [p for p, _ in timed]
        ax.bar(labels, values, yerr=[low, high], color=[COLORS.get(p, "#9467bd") for p in labels], capsize=3)
        ax.set_title(name)
        ax.set_ylabel(w["unit"])
        ax.tick_params(axis="x", labelrotation=45)
        refused = [p for p, r in w["peers"].items() if r.get("status") == "refused"]
        if refused:
            ax.set_xlabel("refused (loss differs): " + ", ".join(refused), fontsize=7)
    if has_compile:
        ax = fig.add_subplot(grid[rows - 1, :])
        bars = [(f"{w}/{p}", c) for w, peers in report["compile"].items() for p, c in peers.items()]
        xs = range(len(bars))
        ax.bar([x - 0.2 for x in xs], [c.get("cold_s") or 0 for _, c in bars], 0.4, label="cold (empty cache)")
        ax.bar([x + 0.2 for x in xs], [c.get("warm_s") or 0 for _, c in bars], 0.4, label="warm (cached)")
        ax.set_xticks(list(xs), [b for b, _ in bars], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        ax.set_title("compile time (time to the first step minus a steady step)")
        ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(f"drug-bench on {m['cpu']} (threads: {report['settings']['threads'] or 'default'})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
