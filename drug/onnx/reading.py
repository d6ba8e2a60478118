"""From a file (or a ModelProto) to a checked model whose every value has an inferred type, with
the batch dimension resolved: what the importer walks. Everything that can be refused before a
single drug node exists is refused here, naming the file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import google.protobuf.message
import numpy as np
import onnx
import onnx.checker
import onnx.defs
import onnx.inliner
import onnx.shape_inference

from ..core.errors import GraphError
from ..core.types import Shape

MIN_OPSET = 13
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest opset the installed onnx package defines
ONNX_DOMAINS = ("", "ai.onnx")
BATCH_PARAM = "batch"  # the symbolic name the batch gets in the model drug infers shapes on


@dataclass(frozen=True)
class Prepared:
    """A checked, inlined model with inferred value types, and what the batch is."""

    model: onnx.ModelProto
    source: str  # the file, or a description of the in-memory model, for error messages
    opset: int
    batch_names: frozenset[str]  # symbolic dimensions that mean the batch (after preparation: BATCH_PARAM)
    input_shapes: dict[str, Shape]  # graph inputs (initializers excluded), None = the batch
    value_types: dict[str, onnx.TypeProto]  # every typed value: inputs, outputs, intermediate values


def describe_source(source: str | os.PathLike | onnx.ModelProto) -> str:
    if isinstance(source, onnx.ModelProto):
        return f"ONNX model '{source.graph.name or '(unnamed)'}'"
    return os.fspath(source)


def read(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """The model, parsed; a truncated or malformed file is a GraphError naming it."""
    if isinstance(source, onnx.ModelProto):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise GraphError(f"{path}: no such ONNX file")
    try:
        return onnx.load(path)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError, OSError) as error:
        raise GraphError(f"{path}: not a readable ONNX model (truncated or malformed?): {error}") from None


def check_opset(model: onnx.ModelProto, source: str) -> int:
    versions = {entry.domain: entry.version for entry in model.opset_import}
    opset = next((versions[d] for d in ONNX_DOMAINS if d in versions), None)
    if opset is None:
        raise GraphError(f"{source}: the model imports no version of the default ONNX operator set")
    if opset < MIN_OPSET:
        raise GraphError(
            f"{source}: opset {opset} is older than {MIN_OPSET}, the oldest drug imports; convert it first "
            f"with onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    if opset > MAX_OPSET:
        raise GraphError(
            f"{source}: opset {opset} is newer than {MAX_OPSET}, the newest the installed onnx package "
            f"{onnx.__version__} defines; upgrade onnx or export with an older opset"
        )
    return opset


def _dims_of(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension] | None:
    tensor = value.type.tensor_type
    return list(tensor.shape.dim) if tensor.HasField("shape") else None


def _batch_axes(inputs: list[onnx.ValueInfoProto], batch_dim: int | str | None, source: str) -> tuple[set[str], bool]:
    """The symbolic names that mean the batch, and whether fixed sizes on the batch axis do too
    (a file exported with a fixed batch size: no input has a symbolic size on that axis)."""
    if batch_dim is None:
        return set(), False
    if isinstance(batch_dim, str):
        return {batch_dim}, False
    if not isinstance(batch_dim, (int, np.integer)):
        raise GraphError(f"batch_dim must be an axis (int), a dimension name (str) or None, got {batch_dim!r}")
    names = set()
    for value in inputs:
        dims = _dims_of(value)
        if dims is not None and len(dims) > batch_dim and dims[batch_dim].HasField("dim_param"):
            names.add(dims[batch_dim].dim_param)
    return names, not names


def resolve_dims(
    model: onnx.ModelProto, source: str, batch_dim: int | str | None, fixed: Mapping[str, int]
) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of the model whose graph inputs have fixed sizes everywhere but the batch, which is
    named BATCH_PARAM. An int `batch_dim` means the symbolic sizes on that axis of the inputs (or,
    when the file fixes every size, that axis of every input). `fixed` gives sizes to other
    symbolic dimensions; any dimension left symbolic or unknown is refused, naming the input and
    the axis."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    batch_names, fixed_batch = _batch_axes(inputs, batch_dim, source)
    for value in inputs:
        dims = _dims_of(value)
        if dims is None:
            raise GraphError(f"{source}: input '{value.name}' has no shape; drug needs every input's rank and sizes")
        for axis, dim in enumerate(dims):
            if fixed_batch and axis == batch_dim:
                dim.dim_param = BATCH_PARAM  # the file fixed the batch size: drug binds it per call
            elif dim.HasField("dim_param") and dim.dim_param in batch_names:
                dim.dim_param = BATCH_PARAM
            elif dim.HasField("dim_param") and dim.dim_param in fixed:
                dim.dim_value = int(fixed[dim.dim_param])
            elif not dim.HasField("dim_value"):
                what = f"the dynamic dimension '{dim.dim_param}'" if dim.dim_param else "of unknown size"
                raise GraphError(
                    f"{source}: input '{value.name}' axis {axis} is {what}; drug compiles fixed sizes except for "
                    f"the batch (batch_dim={batch_dim!r}): give it a size with dims={{'{dim.dim_param or '?'}': N}} "
                    f"or pick it as the batch with batch_dim"
                )
        if sum(d.dim_param == BATCH_PARAM for d in dims) > 1:
            raise GraphError(f"{source}: input '{value.name}' has the batch dimension on more than one axis")
    for value in model.graph.output:  # shape inference gives the outputs' shapes from the inputs'
        value.type.tensor_type.ClearField("shape")
    return model, batch_names


def shape_of(value_type: onnx.TypeProto) -> tuple[int | str | None, ...] | None:
    """Sizes (int), symbolic names (str) or None (unknown) per axis; None if the rank is unknown."""
    tensor = value_type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
        for d in tensor.shape.dim
    )


def prepare(
    source: str | os.PathLike | onnx.ModelProto, batch_dim: int | str | None, fixed: Mapping[str, int] | None
) -> Prepared:
    label = describe_source(source)
    original = read(source)
    try:
        onnx.checker.check_model(original)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise GraphError(f"{label}: not a valid ONNX model: {error}") from None
    opset = check_opset(original, label)
    try:
        inlined = onnx.inliner.inline_local_functions(original)
    except Exception as error:  # the inliner raises C++ errors of no documented type
        raise GraphError(f"{label}: cannot inline the model's local functions: {error}") from None
    model, batch_names = resolve_dims(inlined, label, batch_dim, fixed or {})
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as error:
        raise GraphError(f"{label}: ONNX shape inference fails on this model: {error}") from None
    initializers = {t.name for t in model.graph.initializer}
    graph = model.graph
    value_types = {v.name: v.type for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    input_shapes = {
        v.name: tuple(None if d == BATCH_PARAM else d for d in shape_of(v.type))
        for v in graph.input
        if v.name not in initializers
    }
    return Prepared(model, label, opset, frozenset(batch_names), input_shapes, value_types)
