"""The results as people read them (a rich table, or plain text without rich) and as JSON."""

from __future__ import annotations

import json
import math

SCHEMA = 1


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def header_lines(report: dict) -> list[str]:
    m, s = report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    t = m.get("threads", {})
    pools = ", ".join(f"{p['library']} ({p['api']}) {p['threads']}" for p in t.get("pools", []))
    torch = t.get("torch")
    lines = [
        f"CPU: {m['cpu']} ({', '.join(m['cpu_flags'])}); {t.get('cpu_count')} CPUs, affinity {t.get('affinity')}",
        f"measured peaks: sgemm {m['sgemm_peak_gflops']:.1f} GFLOP/s, "
        f"memory {m['memory_bandwidth_gbs']:.1f} GB/s (best of STREAM copy/add, "
        f"threads: {m.get('memory_bandwidth_detail', {}).get('threads', '?')}); "
        f"other processes' load: {_num(m.get('other_load_cpus'), 2)} CPUs (load average at start "
        f"{_num(m.get('load_average_at_start'), 2)})",
        f"threads: requested {s['threads'] or 'default'}; pools: {pools}"
        + (f"; torch {torch['threads']} (+{torch['interop_threads']} interop)" if torch else "")
        + "".join(f"; {k}={v}" for k, v in t.get("env", {}).items()),
        f"versions: {versions}",
        f"drug backend: requested {s['backend']}, used {s.get('drug_backend_used') or '-'}; size {s['size']}; "
        f"{'quick' if s['quick'] else 'full'} timing ({s['timing']['rounds']} rounds max)",
    ]
    return lines + [f"note: {n}" for n in report.get("notes", [])]


def _peak(r: dict) -> str:
    return "error" if r.get("memory_error") else _num(r.get("peak_mb"), 4)


COLUMNS = ["workload", "peer", "throughput", "spread", "ms/step", "drug speedup", "GFLOP/s | GB/s", "% peak", "peak MB"]
SLOWDOWN = "slowdown vs idle"  # a column of runs under --load


def _loaded(report: dict) -> bool:
    return any("slowdown" in r for w in report["workloads"].values() for r in w["peers"].values())


def columns(report: dict) -> list[str]:
    return COLUMNS + [SLOWDOWN] if _loaded(report) else COLUMNS


def _slowdown(r: dict) -> str:
    if "slowdown" not in r:
        return "-"
    return f"÷{r['slowdown']:.2f} of {_num(1000 * r['baseline_time_s']['median'], 4)} ms"


def workload_rows(report: dict) -> list[list[str]]:
    loaded = _loaded(report)
    rows = []
    for wname, w in report["workloads"].items():
        for pname, r in w["peers"].items():
            status = r.get("status")
            if status != "ok" or "time_s" not in r:
                label = {"refused": "REFUSED: loss differs", "skipped": "skipped", "error": "error"}.get(status, status)
                rows.append([wname, pname, label, "", "", "-", "", "", _peak(r)] + (["-"] if loaded else []))
                continue
            rate = r.get("gbs", r["gflops"])
            speedup = r.get("drug_speedup")
            rows.append(
                [
                    wname,
                    pname + (f" [{r['backend']}]" if r.get("backend") else ""),
                    f"{_num(r['throughput'], 4)} {w['unit']}",
                    f"±{100 * r['time_s']['spread'] / 2:.0f}%",
                    _num(1000 * r["time_s"]["median"], 4),
                    "-" if speedup is None else f"{speedup:.2f}x",
                    _num(rate, 4),
                    f"{r['percent_of_peak']:.1f}% {'bw' if 'gbs' in r else 'sgemm'}",
                    _peak(r),
                ]
                + ([_slowdown(r)] if loaded else [])
            )
    return rows


COMPILE_COLUMNS = ["workload", "peer", "cold s", "warm s", "note"]


def compile_rows(report: dict) -> list[list[str]]:
    rows = []
    for wname, peers in report.get("compile", {}).items():
        for pname, c in peers.items():
            note = c.get("error") or c.get("note") or ""
            rows.append([wname, pname, _num(c.get("cold_s")), _num(c.get("warm_s")), note])
    return rows


def notes_of(report: dict) -> list[str]:
    out = []
    for wname, w in report["workloads"].items():
        for pname, r in w["peers"].items():
            if r.get("note"):
                out.append(f"{wname}/{pname}: {r['note']}")
            if r.get("memory_error"):
                out.append(f"{wname}/{pname}: memory probe failed: {r['memory_error']}")
    return out


FOOTER = (
    "throughput: median over interleaved blocks; spread: half the interquartile range of the step time; "
    "drug speedup: peer's median step time / drug's (>1: drug faster), only where the losses agree; "
    "GFLOP/s: GEMM and convolution FLOPs of the whole train step; fusion: GB/s of 5 reads + 1 write; "
    "peak MB: peak resident memory of steady train steps in a separate process, above its baseline."
)
SLOWDOWN_FOOTER = (
    "slowdown: median step time under --load over the median of the same rounds' blocks with the busy "
    "processes stopped (that idle step time after 'of')."
)


def footer(report: dict) -> str:
    return FOOTER + (" " + SLOWDOWN_FOOTER if _loaded(report) else "")


def render_plain(report: dict) -> str:
    def table(columns, rows):
        widths = [max(len(str(x)) for x in [c] + [r[i] for r in rows]) for i, c in enumerate(columns)]
        fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
        return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])

    rows = workload_rows(report)
    parts = ["\n".join(header_lines(report)), table(columns(report), rows) if rows else ""]
    if report.get("compile"):
        parts.append("compile times (time to the first step minus a steady step; separate processes)")
        parts.append(table(COMPILE_COLUMNS, compile_rows(report)))
    parts += ["\n".join(notes_of(report)), footer(report)]
    return "\n\n".join(p for p in parts if p)


def render_rich(report: dict, console) -> None:
    from rich.table import Table

    for line in header_lines(report):
        console.print(line, markup=False, highlight=False)
    table = Table(title="drug-bench", show_lines=False)
    for i, c in enumerate(columns(report)):
        table.add_column(c, justify="left" if i < 2 else "right")
    last = None
    for row in workload_rows(report):
        if last is not None and row[0] != last:
            table.add_section()
        last = row[0]
        style = "bold" if row[1].startswith("drug") else ("red" if row[2].startswith("REFUSED") else None)
        table.add_row(*row, style=style)
    if table.row_count:
        console.print(table)
    if report.get("compile"):
        ctable = Table(title="compile: time to the first step minus a steady step (separate processes)")
        for i, c in enumerate(COMPILE_COLUMNS):
            ctable.add_column(c, justify="right" if 1 < i < 4 else "left")
        for row in compile_rows(report):
            ctable.add_row(*row)
        console.print(ctable)
    for line in notes_of(report):
        console.print(line, markup=False, highlight=False)
    console.print(footer(report), markup=False, highlight=False, style="dim")


def print_report(report: dict) -> None:
    try:
        from rich.console import Console
    except ImportError:
        print(render_plain(report))
        return
    render_rich(report, Console(width=max(Console().width, 120)))


def write_json(report: dict, path: str) -> None:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with open(path, "w") as f:
        json.dump(clean({"schema": SCHEMA, **report}), f, indent=2)
        f.write("\n")
