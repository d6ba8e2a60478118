"""onnxruntime's CPU provider on the `onnx` workloads: the same file drug imports, with as many
intra-op threads as drug's steps use."""

from __future__ import annotations

import os

from .. import threads
from ..workloads import Data, OnnxInference, Workload
from .base import Peer, Unsupported


def available() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as error:
        return f"onnxruntime not installed ({error}); install the 'onnx' extra"
    return None


def thread_count() -> int:
    """What drug's steps use: --threads, else a thread per core this process may run on."""
    return threads.REQUESTED or len(os.sched_getaffinity(0))


class OnnxRuntimePeer(Peer):
    name = "onnxruntime"

    def __init__(self, workload: Workload, data: Data):
        if not isinstance(workload, OnnxInference):
            raise Unsupported(workload.name)
        import onnxruntime as ort

        from ..onnx_file import model_file

        super().__init__(workload, data)
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_file(workload, data)), options, providers=["CPUExecutionProvider"]
        )

    def run(self, batch):
        return self.session.run(None, batch)[0]


def build(workload: Workload, data: Data) -> Peer:
    return OnnxRuntimePeer(workload, data)
