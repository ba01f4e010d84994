"""Built-in imaginers."""
