"""The runtime: compiled functions as users call them (feeds checked, outputs delivered, state
and checkpoints kept, calls of one graph serialized), and data-parallel steps. It asks the
backend registry for an executor and builds programs with compiler.build."""
