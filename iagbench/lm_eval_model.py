"""Old import path, kept for code written against it: the module is now `iagbench.analysis.lm_eval_model`."""

from iagbench.analysis.lm_eval_model import IagbenchLM, main, process_results

__all__ = ["IagbenchLM", "process_results", "main"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
