"""The Graph users build: the core graph plus `compile`, which reaches the runtime, and the ways
to look at a graph: `summary`, `to_dot` and `evaluate`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .compiler.build import as_node_list
from .compiler.optimizers import Optimizer
from .core.graph import Graph as CoreGraph
from .core.leaves import InputOp
from .core.node import Node
from .core.program import ancestors
from .runtime import summary as summaries
from .runtime import visualize
from .runtime.step import CompiledFunction, compile_step


class Graph(CoreGraph):
    """A define-then-run graph: declare inputs, parameters and ops once, then compile it into
    native functions (a train step, a predictor) and call those.

    Args:
        seed: Seed of the random initial values of the parameters (Xavier by default).
        dtype: The float dtype of parameters, inputs and constants unless they say otherwise
            ("float32" or "float64").

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph(seed=0)
        >>> x = g.input("x", (None, 3))           # None: the batch size, bound per call
        >>> w = g.parameter("w", (3, 2))
        >>> y = dg.relu(x @ w)
        >>> predict = g.compile(outputs=y, backend="numpy")
        >>> predict(x=np.ones((4, 3), np.float32)).shape
        (4, 2)
    """

    def compile(
        self,
        loss: Node | None = None,
        outputs: Node | Sequence[Node] | None = None,
        optimizer: Optimizer | None = None,
        params: Sequence[Node | str] | None = None,
        backend: str | None = None,
        check_finite: bool = False,
        training: bool | None = None,
        debug_numerics: bool = False,
        freeze: bool = False,
    ) -> CompiledFunction:
        """Compile a train step (loss + optimizer), an evaluator (loss) or a predictor (outputs).

        The whole call (forward, backward and optimizer update for a train step) becomes one
        function; the native backend runs it as one call into machine code.

        Args:
            loss: A float scalar node to minimize (or only to evaluate, without an optimizer).
            outputs: A node or a list of nodes the call returns (after the loss, if any).
            optimizer: `dg.SGD`, `dg.RMSProp`, `dg.Adam` (or an `Optimizer`); needs a loss.
                With it, each call is a train step that updates the parameters in place.
            params: The parameters to train (nodes or names); default: every parameter the loss
                depends on. Train a subset, e.g. one side of a GAN.
            backend: "llvm" (native code; the default, or the DRUG_BACKEND environment variable),
                "numpy" (every op's NumPy reference: slow, the oracle tests compare with) or
                "opencl" (an OpenCL device; "opencl:<index or name>" picks one, see docs/gpu.md).
            check_finite: Refuse float feeds that hold NaN or Inf (GraphError naming the input;
                nothing runs).
            training: What mode-dependent ops (dropout, batch norm) compute: their training or
                their inference behaviour. Default: training for a train step, inference otherwise.
            debug_numerics: Check every kernel's results; the first node that produces a NaN or
                an Inf raises `dg.NonFiniteError` naming it and its inputs, and the step changes
                nothing. Slower: a debugging aid.
            freeze: A predictor of the parameters' (and state buffers') values of now, held as
                constants: later writes to `g.params` and train steps do not reach it, and the
                native backend packs its weight matrices for its GEMM once (faster inference).
                Outputs only, in inference mode.

        Returns:
            A `CompiledFunction`: call it with feeds by input name, e.g.
                `train(x=images, y=labels)`. A train step and an evaluator return the loss as a
                float (a tuple `(loss, *outputs)` when outputs are compiled too); a predictor
                returns its output array (a tuple if several).

        Raises:
            GraphError: Nothing to compile, an optimizer without a loss, nothing to train, a
                node of another graph, an unknown backend.
            ShapeError: A loss that is not a float scalar.

        Example:
            >>> import drug as dg, numpy as np
            >>> g = dg.Graph(seed=0)
            >>> x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype="int32")
            >>> logits = x @ g.parameter("w", (4, 3), init="zeros")
            >>> train = g.compile(loss=dg.softmax_cross_entropy(logits, y), optimizer=dg.SGD(0.1))
            >>> loss = train(x=np.ones((8, 4), np.float32), y=np.zeros(8, np.int32))
            >>> round(loss, 4)
            1.0986
        """
        return compile_step(
            self,
            loss,
            outputs,
            optimizer,
            params,
            backend,
            check_finite,
            training=training,
            debug_numerics=debug_numerics,
            freeze=freeze,
        )

    def summary(self, outputs: Node | Sequence[Node] | None = None, batch: int | None = None) -> summaries.Summary:
        """A table of the graph: one row per layer call, op call, input and parameter, with the
        output shape and dtype and the parameters it created; then the totals (parameters and
        their bytes) and an estimate of the memory the forward values take per example.

        Args:
            outputs: Summarize only what these nodes depend on (default: every node made so far
                that is still referenced).
            batch: Also estimate the values' memory at this batch size.

        Returns:
            A `Summary`; `print(g.summary())` shows the table.

        Example:
            >>> import drug as dg
            >>> g = dg.Graph()
            >>> x = g.input("x", (None, 784))
            >>> h = dg.layers.Dense(256, "relu", name="fc1")(x).named("h")
            >>> print(g.summary())
            layer / op   output  shape        dtype     params
            --------------------------------------------------
            input        x       (None, 784)  float32
            fc1 (Dense)  h       (None, 256)  float32  200,960
            --------------------------------------------------
            parameters: 200,960 (785 KiB)
            values: 3 KiB per example
              (forward values before fusion and memory reuse: an upper bound of the native arena
              for inference; a train step also holds the gradients, about twice as much)
        """
        nodes = self.nodes() if outputs is None else ancestors(as_node_list(outputs))
        return summaries.summarize(nodes, batch)

    def to_dot(self, outputs: Node | Sequence[Node] | None = None) -> str:
        """Graphviz source (DOT) of the graph: inputs, parameters and ops with their shapes, one
        dashed cluster per layer call or composite op call; `outputs` are drawn with a double
        border and limit the picture to what they depend on.

        Render it with `dg.render_dot(g.to_dot(), "graph.svg")` (needs `pip install
        "drug[graphviz]"` and the Graphviz program), or paste it into any DOT viewer. The
        compiled program, with one cluster per fused kernel, is `compiled.to_dot()`.

        Args:
            outputs: Draw only what these nodes depend on (default: every node made so far).

        Returns:
            The DOT source text.

        Example:
            >>> import drug as dg
            >>> g = dg.Graph()
            >>> x = g.input("x", (None, 2))
            >>> print(g.to_dot(dg.relu(x)).splitlines()[0])
            digraph drug {
        """
        marked = as_node_list(outputs)
        nodes = self.nodes() if outputs is None else ancestors(marked)
        return visualize.graph_dot(nodes, marked, title=f"graph (seed {self.seed}, {self.dtype})")

    def evaluate(self, nodes: Node | Sequence[Node], feeds: Mapping[str, Any]) -> Any:
        """The values of `nodes` for `feeds`, computed with the NumPy reference backend from the
        current parameters (nothing is trained); feeds the nodes do not need are ignored.
        Used by `dg.evaluate` and `Node.eval`."""
        wanted = as_node_list(nodes)
        needed = {n.name for n in ancestors(wanted) if isinstance(n.op, InputOp)}
        step = self.compile(outputs=wanted, backend="numpy")
        values = step({name: value for name, value in feeds.items() if name in needed})
        return values if isinstance(nodes, Node) or len(wanted) != 1 else (values,)


def evaluate(nodes: Node | Sequence[Node], feeds: Mapping[str, Any] | None = None, /, **named: Any) -> Any:
    """The value of a node (or a tuple of values for a list of nodes) for the given feeds, for a
    quick look at an intermediate result without compiling a function for it. Computed with the
    NumPy reference backend from the current parameters; feeds the nodes do not need are
    ignored, so the batch you train with can be passed as it is.

    Args:
        nodes: A node, or a list of nodes of one graph.
        feeds: Arrays by input name, as a dict.
        **named: Arrays by input name.

    Returns:
        A NumPy array, or a tuple of arrays for a list of nodes.

    Raises:
        GraphError: A needed input is missing, or the nodes belong to no drug.Graph.
        ShapeError: A feed does not fit its input.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> h = dg.relu(x - 1.0)
        >>> dg.evaluate(h, x=np.array([[0.0, 1.0, 2.5]], np.float32))
        array([[0. , 0. , 1.5]], dtype=float32)
    """
    wanted = as_node_list(nodes)
    if not wanted:
        return ()
    values = wanted[0].graph.evaluate(nodes, {**(feeds or {}), **named})
    return values


def render_dot(source: str, path: str, format: str | None = None) -> str:
    """Draw Graphviz source (`g.to_dot()`, `compiled.to_dot()`) into a file whose suffix gives
    the format (svg, png, pdf); returns the path. Needs the optional `graphviz` package
    (`pip install "drug[graphviz]"`) and the Graphviz program (`apt-get install graphviz`).

    Args:
        source: DOT text.
        path: The file to write.
        format: Overrides the format the suffix gives.

    Returns:
        The path written.

    Raises:
        ImportError: The `graphviz` package is not installed.

    Example:
        ```python
        dg.render_dot(g.to_dot(), "model.svg")
        dg.render_dot(train.to_dot(), "kernels.png")
        ```
    """
    return visualize.render(source, path, format)
