"""Splitting one module's IR text into parts that LLVM compiles on several threads at once.

The entry function and its own helpers (functions named `entry.*`: the hubs) call one function
per kernel (the roots). Part 0 holds the hubs; each part gets a share of the roots, balanced by
what LLVM will spend on them (`_Function.cost`), with every internal helper and constant they use
copied in; the roots it calls but does not hold become declarations, and the module's shared
(non-internal) globals are defined in part 0 and declared elsewhere. The parts link back
together in one JIT engine. Anything this reader does not recognise makes it return None: the
module is then compiled whole, which is always correct.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# What LLVM spends on a function, in IR lines of a kernel's loop: each function pays for the
# whole code generation pipeline however short it is (an unrolled RNN's slices are a few lines
# each), and a function it does not optimize (`optnone`: the hubs, copies) costs several times
# less per line, so counted at full weight part 0 would get hardly any kernel.
FUNCTION_COST = 12
OPTNONE_DISCOUNT = 8

_REFERENCE = re.compile(r'@"([^"]+)"|@([-\w$.]+)')
_DEFINE = re.compile(r'^define (internal |private |hidden )?(.*?@"?([^"(]+)"?\(.*)$')
_GLOBAL = re.compile(r'^@"?([^"\s]+)"? = (.*?)\b(global|constant) (.*)$')


@dataclass
class _Function:
    name: str
    lines: list[str]
    internal: bool
    signature: str  # return type, name and arguments: what a declaration repeats
    references: set[str] = field(default_factory=set)

    @property
    def cost(self) -> float:
        optimized = "optnone" not in self.lines[0].rsplit(")", 1)[-1].split()  # the function's attributes
        return FUNCTION_COST + len(self.lines) / (1 if optimized else OPTNONE_DISCOUNT)


@dataclass
class _Global:
    name: str
    line: str
    internal: bool
    constant: bool
    type_text: str | None  # None: a type this reader cannot copy into a declaration


@dataclass
class _Module:
    header: list[str]
    functions: dict[str, _Function]
    globals: dict[str, _Global]
    shared_lines: list[str]  # declarations, metadata, attribute groups: every part gets them


def _type_prefix(text: str) -> str | None:
    """The type at the start of a global's `type initializer` text (scalar or array)."""
    if text.startswith("["):
        depth = 0
        for i, ch in enumerate(text):
            depth += {"[": 1, "]": -1}.get(ch, 0)
            if depth == 0:
                return text[: i + 1]
        return None
    token = text.split(" ", 1)[0]
    return token if re.fullmatch(r"i\d+|float|double|ptr", token) else None


def _arguments_end(signature: str) -> int:
    depth = 0
    for i, ch in enumerate(signature):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(signature)


def _read(text: str) -> _Module | None:
    header: list[str] = []
    functions: dict[str, _Function] = {}
    globals_: dict[str, _Global] = {}
    shared: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("define "):
            match = _DEFINE.match(line)
            if match is None:
                return None
            end = lines.index("}", i)
            linkage, rest, name = match.groups()
            signature = rest[: _arguments_end(rest)]
            body = lines[i : end + 1]
            refs = {a or b for a, b in _REFERENCE.findall("\n".join(body[1:]))}
            functions[name] = _Function(name, body, linkage in ("internal ", "private "), signature, refs - {name})
            i = end + 1
            continue
        if line.startswith("@"):
            match = _GLOBAL.match(line)
            if match is None:
                return None
            name, linkage, kind, rest = match.groups()
            internal = "internal" in linkage or "private" in linkage
            globals_[name] = _Global(name, line, internal, kind == "constant", _type_prefix(rest))
        elif line.startswith(("declare ", "!", "attributes ")):
            shared.append(line)
        elif line.startswith(("; ModuleID", "target ", "source_filename")):
            header.append(line)
        elif line.strip() and not line.startswith(";"):
            return None
        i += 1
    return _Module(header, functions, globals_, shared)


def _closure(module: _Module, root: str, roots: set[str]) -> tuple[set[str], set[str]]:
    """The helper functions and the globals `root` uses, following helpers but not other roots."""
    helpers: set[str] = set()
    used_globals: set[str] = set()
    pending = [root]
    while pending:
        for ref in module.functions[pending.pop()].references:
            if ref in module.globals:
                used_globals.add(ref)
            elif ref in module.functions and ref not in roots and ref not in helpers:
                helpers.add(ref)
                pending.append(ref)
    return helpers, used_globals


def split_module(text: str, entry: str, parts: int) -> list[str] | None:
    """`parts` IR texts (fewer if there are fewer kernels) that together define what `text` does,
    or None if it should stay whole."""
    module = _read(text)
    if parts < 2 or module is None or entry not in module.functions:
        return None
    hubs = [entry] + sorted(f for f in module.functions if f.startswith(f"{entry}."))
    roots = {r for h in hubs for r in module.functions[h].references if r in module.functions} - set(hubs)
    parts = min(parts, len(roots))
    if parts < 2:
        return None
    owned = {r: _closure(module, r, roots) for r in sorted(roots | set(hubs))}
    if any(g.internal and not g.constant for g in module.globals.values()):
        return None  # a mutable internal global cannot be copied into several parts
    if any(g.type_text is None for g in module.globals.values() if not g.internal):
        return None

    def weight(name: str) -> float:
        helpers, _ = owned[name]
        return sum(module.functions[f].cost for f in helpers | {name})

    bins: list[list[str]] = [list(hubs)] + [[] for _ in range(parts - 1)]
    load = [sum(map(weight, hubs))] + [0.0] * (parts - 1)
    for root in sorted(roots, key=weight, reverse=True):
        target = load.index(min(load))
        bins[target].append(root)
        load[target] += weight(root)
    return [_part(module, names, roots, owned, first=index == 0) for index, names in enumerate(bins)]


def _part(module: _Module, names: list[str], roots: set[str], owned: dict, first: bool) -> str:
    defined: dict[str, None] = {}
    used_globals: set[str] = set()
    for name in names:
        helpers, globals_ = owned[name]
        defined.update(dict.fromkeys([name, *sorted(helpers)]))
        used_globals |= globals_
    out = list(module.header)
    for g in module.globals.values():
        if g.internal and g.name in used_globals:
            out.append(g.line)  # an internal constant: every part that reads it has its copy
        elif not g.internal:
            out.append(g.line if first else f'@"{g.name}" = external global {g.type_text}')
    out += module.shared_lines
    called = set().union(*(module.functions[f].references for f in defined))
    for name in sorted((called & roots) - set(defined)):
        out.append(f"declare {module.functions[name].signature}")
    for name in defined:
        function = module.functions[name]
        lines = list(function.lines)
        if name in roots:  # roots are called across parts: external linkage
            lines[0] = f"define {lines[0][len('define ') :].removeprefix('internal ')}"
        out += lines
    return "\n".join(out) + "\n"
