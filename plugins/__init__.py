"""Built-in plugins of iagbench, registered through the `iagbench` entry-point group like any other."""
