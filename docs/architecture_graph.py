"""Draw the layers of drug from its import graph: docs/img/architecture.svg.

Reads every module's imports (ast, so nothing is imported), maps each module to its room (a layer,
or one package inside one), and draws the rooms with an arrow for each pair that imports, labelled
with how many imports it stands for. Run from the project root: `python docs/architecture_graph.py`
(needs Graphviz's `dot`; without it the DOT source is printed)."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img" / "architecture.svg"
# rooms, top to bottom: (module prefix, label); the first prefix that matches wins
ROOMS = [
    ("drug.aot", "aot/ (drug-compile)"),
    ("drug.bench", "bench/ (drug-bench)"),
    ("drug.compile", "aot/ (drug-compile)"),
    ("drug.runtime", "runtime/"),
    ("drug.backends.llvm", "backends/llvm/"),
    ("drug.backends.reference", "backends/reference/"),
    ("drug.backends.opencl", "backends/opencl/"),
    ("drug.backends", "backends/ (registry)"),
    ("drug.compiler", "compiler/"),
    ("drug.ops", "ops/"),
    ("drug.core", "core/"),
    ("drug", "drug/ (facade: dg.*)"),
]


def modules() -> dict[str, Path]:
    """Module name -> file, following setup.cfg's package_dir (drug.core -> core/, ...)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapping = dict(
        (k.strip(), v.strip())
        for k, v in (line.split("=") for line in cfg["options"]["package_dir"].split("\n") if line)
    )
    found = {}
    for package, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path  # nested package_dir entries give the same names
    return found


def room(module: str) -> str:
    return next(label for prefix, label in ROOMS if module == prefix or module.startswith(prefix + "."))


def imports(name: str, path: Path, known: dict[str, Path]) -> list[str]:
    """The drug modules `name` imports (`from pkg import module` counts as `pkg.module`)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            modules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            out += modules or [target]
    return [t for t in out if t == "drug" or t.startswith("drug.")]


def room_graph() -> nx.DiGraph:
    mods = modules()
    counts: Counter = Counter()
    for name, path in mods.items():
        for target in set(imports(name, path, mods)):
            while target not in mods and "." in target:
                target = target.rpartition(".")[0]
            a, b = room(name), room(target)
            own_child = name != "drug" and path.name == "__init__.py" and target.startswith(name + ".")  # re-exports
            if a != b and target in mods and not own_child:
                counts[(a, b)] += 1
    graph = nx.DiGraph()
    graph.add_nodes_from(label for _, label in ROOMS)
    for (a, b), n in counts.items():
        graph.add_edge(a, b, imports=n)
    return graph


def dot_source(graph: nx.DiGraph) -> str:
    lines = [
        "digraph drug {",
        '  rankdir=TB; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];',
        '  edge [color="#555566", fontname="Helvetica", fontsize=9];',
    ]
    for node in graph.nodes:
        lines.append(f'  "{node}";')
    for a, b, data in graph.edges(data=True):
        lines.append(f'  "{a}" -> "{b}" [label="{data["imports"]}"];')
    # layout only: the backends sit below the runtime, which reaches them through the registry
    backends = [n for n in graph.nodes if n.startswith("backends/") and "registry" not in n]
    lines.append("  { rank=same; " + " ".join(f'"{n}";' for n in backends) + " }")
    lines += [f'  "runtime/" -> "{n}" [style=invis];' for n in backends]
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    graph = room_graph()
    cycles = list(nx.simple_cycles(graph))
    if cycles:
        print(f"the rooms import each other in a cycle: {cycles[0]}", file=sys.stderr)
        return 1
    source = dot_source(graph)
    if shutil.which("dot") is None:
        print(source)
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(subprocess.run(["dot", "-Tsvg"], input=source.encode(), capture_output=True, check=True).stdout)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
