"""What drug-compile compiles: a Python file or module whose `build()` returns the graph, the loss,
the optimizer and the outputs (a dict with those keys, or a `CompileSpec`)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compiler.optimizers import Optimizer
from ..core.errors import GraphError
from ..core.graph import Graph
from ..core.node import Node

C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "bool true false".split()
)

RESERVED_NAMES = frozenset({"tensor_info", "status"})  # drug_tensor_info, enum drug_status (drug_aot_common.h)


@dataclass
class CompileSpec:
    """The library to build: `loss` with `optimizer` gives `train_step`, `outputs` gives `predict`;
    `params` trains a subset (as in `g.compile(params=...)`)."""

    graph: Graph
    loss: Node | None = None
    optimizer: Optimizer | None = None
    outputs: Sequence[Node] = field(default_factory=list)
    params: Sequence[Node | str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.graph, Graph):
            raise GraphError(f"build() must return a drug Graph as 'graph', got {type(self.graph).__name__}")
        self.outputs = [self.outputs] if isinstance(self.outputs, Node) else list(self.outputs or [])
        if self.optimizer is not None and self.loss is None:
            raise GraphError("build() returned an optimizer but no loss to minimize")
        if self.loss is not None and self.optimizer is None:
            raise GraphError("build() returned a loss without an optimizer: add one (a train step), or drop the loss")
        if self.loss is None and not self.outputs:
            raise GraphError("build() returned neither a loss with an optimizer nor outputs: nothing to compile")


def as_spec(value: Any, origin: str) -> CompileSpec:
    if isinstance(value, CompileSpec):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"graph", "loss", "optimizer", "outputs", "params"})
        if unknown:
            raise GraphError(f"{origin}: build() returned unknown keys {unknown}")
        if "graph" not in value:
            raise GraphError(f"{origin}: build() must return a dict with a 'graph' key")
        return CompileSpec(**value)
    raise GraphError(f"{origin}: build() must return a dict or a drug.aot.CompileSpec, got {type(value).__name__}")


def load_spec(target: str) -> tuple[CompileSpec, str]:
    """Import `target` (a .py path or a module name), call its build(); also return a default name."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise GraphError(f"no such file: {target}")
        _importable(str(path.resolve().parent))  # as `python model.py` would: siblings import
        module_name = "_drug_compile_" + re.sub(r"\W", "_", path.stem)
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        _run_user_code(f"{target} could not be run", spec.loader.exec_module, module)
        default_name = path.stem
    else:
        _importable(os.getcwd())  # as `python -m pkg.model` would
        try:
            module = _run_user_code(f"{target} could not be imported", importlib.import_module, target)
        except UserCodeError as error:
            if isinstance(error.__cause__, ModuleNotFoundError) and error.__cause__.name == target.split(".")[0]:
                raise GraphError(f"{target} is neither a file nor an importable module: {error.__cause__}") from None
            raise
        default_name = target.rsplit(".", 1)[-1]
    build = getattr(module, "build", None)
    if not callable(build):
        raise GraphError(f"{target} defines no build() function (see `drug-compile --help` for the convention)")
    return as_spec(_run_user_code(f"{target}: build() failed", build), target), default_name


class UserCodeError(GraphError):
    """The user's module or build() raised; the original exception is the cause (its traceback is
    the user's to read)."""


def _run_user_code(what: str, function, *args):
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - any exception of the user's code is reported as such
        raise UserCodeError(f"{what}: {type(error).__name__}: {error}") from error


def _importable(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)


def c_identifier(text: str) -> str:
    """`text` made a valid C identifier (for argument names)."""
    name = re.sub(r"\W", "_", text, flags=re.ASCII) or "_"
    if name[0].isdigit():
        name = "_" + name
    return name + "_" if name in C_KEYWORDS else name


def check_library_name(name: str) -> str:
    """Names become C identifiers (drug_<name>_create, the handle type drug_<name>)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in C_KEYWORDS:
        raise GraphError(f"library name {name!r} is not a C identifier; choose one with --name")
    if name in RESERVED_NAMES:
        raise GraphError(f"library name {name!r} clashes with drug_{name} of the common header part; choose another")
    return name
