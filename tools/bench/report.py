"""Turn the raw results of tools/bench/compare.py into results.md and results.png."""

from __future__ import annotations

import statistics
from pathlib import Path

HIGHER_IS_BETTER = ("MB/s", "reads/s", "cache hits")
PEERS = ("squashfuse_ll", "ratarmount")


def better_high(workload: str) -> bool:
    return any(u in workload for u in HIGHER_IS_BETTER)


def summarize(results: dict[str, list[dict]]) -> tuple[list[str], dict[str, dict[str, tuple]]]:
    """workloads in first-seen order, and {workload: {tool: (median, min, max, n)}}."""
    workloads: list[str] = []
    for runs in results.values():
        for r in runs:
            for k in r:
                if k not in workloads:
                    workloads.append(k)
    table: dict[str, dict[str, tuple]] = {w: {} for w in workloads}
    for tool, runs in results.items():
        for w in workloads:
            vals = [r[w] for r in runs if w in r]
            if vals:
                table[w][tool] = (statistics.median(vals), min(vals), max(vals), len(vals))
    return workloads, table


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def write_report(report: dict, out: Path) -> None:
    workloads, table = summarize(report["results"])
    c = report["corpus"]
    lines = [
        "# pynydusd benchmarks", "",
        f"Measured {report['date']} on {report['machine']}.", "",
        f"Profile `{report['profile']}`, {report['rounds']} round(s), tools interleaved (each "
        f"round starts one tool later). Corpus: {c['entries']:,} entries, {c['files']:,} files, "
        f"{c['bytes'] / 1e6:,.0f} MB (a copy of system trees, a random and a compressible big "
        "file, a directory of tiny files). Every figure is the median, with min–max over the "
        "rounds; every run was checked against the corpus (entry count and bytes of the walk, "
        "bytes of the full read and of dd, the sha256 of the 10,000 random reads).", "",
        "Reproduce: `make bench` (or `make bench-quick`), as root on Debian/Ubuntu.", "",
        "pynydusd runs with `--no-prefetch` (on-demand reads only) and a fresh chunk cache for "
        "every mount; *cold* means a fresh mount after `echo 3 > /proc/sys/vm/drop_caches`.", "",
    ]
    if report["errors"]:
        lines += ["## Errors (not averaged in)", ""] + [f"- {e}" for e in report["errors"]] + [""]
    lines += ["## Packing", "", "| tool | seconds | size (MB) |", "|---|---:|---:|"]
    for k, (s, size) in report["packs"].items():
        lines.append(f"| {k} | {s:.1f} | {size / 1e6:,.0f} |")
    lines.append("")
    nydus = [t for t in report["results"] if t.startswith("pynydusd")]
    for w in workloads:
        rows = table[w]
        if not rows:
            continue
        hint = "higher is better" if better_high(w) else "lower is better"
        lines += [f"## {w}", "", f"({hint})", "", "| tool | median | min–max |", "|---|---:|---:|"]
        for tool, (med, lo, hi, _n) in rows.items():
            lines.append(f"| {tool} | {fmt(med)} | {fmt(lo)}–{fmt(hi)} |")
        ratio_rows = []
        for t in nydus:
            if t not in rows:
                continue
            cells = []
            for peer in PEERS:
                if peer in rows and rows[peer][0]:
                    cells.append(f"{rows[t][0] / rows[peer][0]:.2f}×")
                else:
                    cells.append("–")
            ratio_rows.append(f"| {t} | " + " | ".join(cells) + " |")
        if ratio_rows and any(p in rows for p in PEERS):
            lines += ["", "| ratio | ÷ squashfuse_ll | ÷ ratarmount |", "|---|---:|---:|"]
            lines += ratio_rows
        lines.append("")
    curl = report.get("curl_seconds") or []
    plain = table.get("read every file, cold (MB/s)", {}).get("plain dir")
    reg = table.get("read every file, cold (MB/s)", {}).get("pynydusd v6 zstd, docker-registry")
    if curl and plain and reg:
        size = c["bytes"]
        ref = statistics.median(curl) + size / (plain[0] * 1e6)
        got = size / (reg[0] * 1e6)
        lines += ["## Cold full read through the registry vs curl + local read", "",
                  f"curl of the whole blob from docker-registry: {statistics.median(curl):.2f} s "
                  f"(median); plus a cold read of the plain tree: {size / (plain[0] * 1e6):.2f} s; "
                  f"pynydusd through the registry: {got:.2f} s, **{got / ref:.2f}×** that "
                  "reference (target ≤ 1.2×).", ""]
    (out / "results.md").write_text("\n".join(lines))
    chart(workloads, table, out / "results.png")


def chart(workloads: list[str], table: dict, path: Path) -> None:
    """One panel per workload: each tool's median relative to squashfuse_ll (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [w for w in workloads if "squashfuse_ll" in table[w] and len(table[w]) > 1]
    if not shown:
        return
    cols = 3
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    for ax, w in zip(axes.flat, shown, strict=False):
        base = table[w]["squashfuse_ll"][0]
        tools = list(table[w])
        vals = [table[w][t][0] / base if base else 0 for t in tools]
        if not better_high(w):  # show "speed relative to squashfuse_ll": > 1 is better
            vals = [1 / v if v else 0 for v in vals]
        colors = ["tab:orange" if t.startswith("pynydusd") else "tab:gray" for t in tools]
        ax.barh(tools, vals, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(w, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("relative to squashfuse_ll (> 1 = better than squashfuse_ll), medians")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
