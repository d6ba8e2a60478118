"""ONNX interchange: models come into drug and leave it in the format the field uses.

    import drug.onnx
    graph, inputs, outputs = drug.onnx.load("model.onnx")        # ONNX -> a drug graph
    predict = graph.compile(outputs=list(outputs.values()))
    drug.onnx.export(predict, "out.onnx")                         # a drug predictor -> ONNX

Parsing, checking and shape inference are the official `onnx` package's (the `onnx` extra:
`pip install 'drug[onnx]'`); drug itself does not need it, so `import drug` never loads this."""

try:
    import onnx as _onnx  # noqa: F401 (only to fail early with the extra's name)
except ImportError as error:  # pragma: no cover - exercised where the extra is missing
    raise ImportError(f"drug.onnx needs the 'onnx' extra: pip install 'drug[onnx]' ({error})") from error

from .export import DEFAULT_OPSET, export, exportable_ops
from .importer import MAX_OPSET, MIN_OPSET, Imported, load
from .operators import SUPPORTED_OPS

__all__ = [
    "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "SUPPORTED_OPS", "Imported", "export", "exportable_ops", "load",
]  # fmt: skip
