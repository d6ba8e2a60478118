"""The docstrings are the API reference (docs/reference, built by mkdocstrings): every public
name is documented with its arguments, results and an example, and every example runs."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import drug as dg

PACKAGES = ["drug.core", "drug.ops", "drug.compiler", "drug.runtime"]
FACADE = ["drug.graph", "drug.layers", "drug.datasets", "drug.decoding", "drug.distributed"]


def modules() -> list[str]:
    found = list(FACADE)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        found += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]
    return sorted(found)


def examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    # the examples' own classes must not look like drug's built-in ops (the registry tests pick those by module)
    globs = {**vars(module), "__name__": "docstring_example", "dg": dg, "np": np}
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name, globs=globs)
    return [t for t in tests if t.examples]


ALL = [t for name in modules() for t in examples(name)]


def test_the_reference_has_examples():
    assert len(ALL) >= 50, [t.name for t in ALL]


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.name)
def test_docstring_example(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    output: list[str] = []
    result = runner.run(test, out=output.append)
    assert result.failed == 0, "".join(output)


def public_api() -> dict[str, object]:
    names = list(dg.ops.__all__) + ["grad", "jacobian", "jvp", "hessian_vector_product", "scan", "elementwise"]
    names += ["SGD", "RMSProp", "Adam", "Optimizer", "Graph", "evaluate", "render_dot", "Node"]
    api = {name: getattr(dg, name) for name in names}
    api |= {f"layers.{n}": getattr(dg.layers, n) for n in ("Dense", "Conv2D", "Embedding", "RNNCell", "GRUCell")}
    transformer = ("LSTMCell", "LayerNorm", "RMSNorm", "Dropout", "MultiHeadAttention", "PositionalEmbedding")
    api |= {f"layers.{n}": getattr(dg.layers, n) for n in transformer + ("TransformerBlock", "sinusoidal_positions")}
    api |= {f"Graph.{n}": getattr(dg.Graph, n) for n in ("compile", "input", "parameter", "constant", "summary")}
    api |= {f"Graph.{n}": getattr(dg.Graph, n) for n in ("to_dot",)}
    api |= {f"CompiledFunction.{n}": getattr(dg.CompiledFunction, n) for n in ("__call__", "profile", "load")}
    return api


@pytest.mark.parametrize("name", sorted(public_api()))
def test_public_names_document_arguments_results_and_an_example(name):
    obj = public_api()[name]
    doc = inspect.getdoc(obj) or ""
    assert len(doc.splitlines()[0]) > 10, f"{name} needs a summary line"
    assert "Example:" in doc, f"{name} needs an example"
    if inspect.isfunction(obj) and name != "Op":
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        if params:
            assert "Args:" in doc, f"{name} needs an Args section"
            for param in params:
                assert param.lstrip("*") in doc, f"{name} does not document {param}"
        if inspect.signature(obj).return_annotation not in (None, "None", inspect.Signature.empty):
            assert "Returns:" in doc, f"{name} needs a Returns section"


def test_help_of_compile_documents_every_option():
    doc = inspect.getdoc(dg.Graph.compile)
    for option in ("backend", "params", "check_finite", "debug_numerics", "optimizer", "Returns:", "CompiledFunction"):
        assert option in doc
