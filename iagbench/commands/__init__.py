"""The `iagbench` command line: one module per command, shared argument groups, dispatch."""
