"""drug.onnx.export: a drug predictor (or a graph and its outputs) written as an ONNX model whose
batch dimension is symbolic, checked with onnx.checker (full check, with shape inference) before
anything is written."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.checker
import onnx.helper
import onnx.numpy_helper

from ..compiler.build import as_node_list, build_program
from ..core.errors import GraphError
from ..core.graph import Graph
from ..core.leaves import BufferOp, ConstantOp, InputOp, ParameterOp
from ..core.node import Node
from ..core.program import Program
from ..runtime.step import CompiledFunction
from .emitters import EmitContext, emitter_for, exportable_ops
from .importer import Imported
from .reading import MAX_OPSET, MIN_OPSET

__all__ = ["DEFAULT_OPSET", "export", "exportable_ops"]

DEFAULT_OPSET = 18


def export(
    model: CompiledFunction | Graph | Imported,
    path: str | os.PathLike | None,
    outputs: Node | Sequence[Node] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    batch_name: str = "batch",
    name: str = "drug",
) -> onnx.ModelProto:
    """Write `model` as ONNX to `path` (None: only return the ModelProto).

    model: a compiled predictor (`g.compile(outputs=...)`), a Graph with `outputs`, or what
      drug.onnx.load returned. Mode-dependent ops (dropout, batch norm) are written as they
      compute in inference, unless the predictor was compiled with training=True.
    opset: the ONNX operator set to write (MIN_OPSET to MAX_OPSET).
    batch_name: the symbolic name of the batch dimension (drug's None)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise GraphError(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}, the range drug writes")
    program = _program(model, outputs)
    proto = _write(program, opset, batch_name, name)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise GraphError(f"the exported model fails onnx.checker (a bug in drug's exporter): {error}") from None
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _program(model, outputs) -> Program:
    """The inference program to write: a compiled predictor's own, or one built for the outputs."""
    if isinstance(model, CompiledFunction):
        if outputs is not None:
            raise GraphError("export(compiled, ...) writes the compiled function's own outputs; do not pass outputs")
        if model.trains:
            raise GraphError("export writes predictors; compile one with g.compile(outputs=...) (this one trains)")
        program = model.program
        if program.loss is not None:
            raise GraphError("export writes predictors' outputs; this compiled function evaluates a loss")
        return program
    if isinstance(model, Imported):
        return build_program(model.graph, outputs=outputs or list(model.outputs.values()), training=False)
    if isinstance(model, Graph):
        if not as_node_list(outputs):
            raise GraphError("export(graph, path, outputs=...) needs the output nodes to write")
        return build_program(model, outputs=outputs, training=False)
    raise GraphError(
        f"export takes a compiled predictor, a Graph or drug.onnx.load's result, not {type(model).__name__}"
    )


def _value_info(name: str, node: Node, ctx: EmitContext, batch_name: str) -> onnx.ValueInfoProto:
    dims = [batch_name if d is None else d for d in node.shape]
    return onnx.helper.make_tensor_value_info(name, ctx.elem_type(node.dtype), dims)


def _write(program: Program, opset: int, batch_name: str, name: str) -> onnx.ModelProto:
    ctx = EmitContext(opset)
    graph = program.graph
    leaves = [n for n in program.nodes if not n.inputs]
    for node in leaves:  # inputs and initializers keep their drug names
        ctx.names[node.id] = ctx.fresh(node.label)
    # outputs are named after their nodes (Identity nodes copy the values into them at the end)
    output_names = [ctx.fresh(node.name or f"output_{i}") for i, node in enumerate(program.outputs)]
    inputs: list[onnx.ValueInfoProto] = []
    for node in program.nodes:
        op = node.op
        if isinstance(op, InputOp):
            inputs.append(_value_info(ctx.names[node.id], node, ctx, batch_name))
        elif isinstance(op, (ParameterOp, BufferOp, ConstantOp)):
            store = graph.params if isinstance(op, ParameterOp) else graph.state
            value = op.value if isinstance(op, ConstantOp) else store[node.name]
            array = np.ascontiguousarray(np.asarray(value, node.dtype))
            ctx.initializers.append(onnx.numpy_helper.from_array(array, ctx.names[node.id]))
        elif not node.inputs:
            raise GraphError(f"node {node.label} (a '{op.name}' leaf) has no ONNX form: export a predictor")
        else:
            ctx.names[node.id] = emitter_for(node)(ctx, node)
    outputs = []
    for out_name, node in zip(output_names, program.outputs):
        ctx.add("Identity", [ctx.names[node.id]], output=out_name)
        outputs.append(_value_info(out_name, node, ctx, batch_name))
    onnx_graph = onnx.helper.make_graph(ctx.nodes, name, inputs, outputs, initializer=ctx.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    return onnx.helper.make_model(
        onnx_graph, opset_imports=opsets, producer_name="drug", ir_version=onnx.helper.find_min_ir_version_for(opsets)
    )
