"""Graph, passes and code generation."""
