"""Old import path, kept for code written against it: the module is now `iagbench.commands.main`."""

from iagbench.commands.main import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
