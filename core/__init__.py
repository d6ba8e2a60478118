"""The graph core, the lowest layer: errors, tensor types, nodes and graphs, the Op contract,
graph leaves and the Program the passes transform. It imports no other layer of drug."""
