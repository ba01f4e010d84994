"""iagbench: a plugin-based benchmark harness for open-domain question answering."""

from .components import Dataset, Imaginer, Metric, Reader
from .errors import ConfigurationError, DataError, IagbenchError, UnknownNameError
from .hookspecs import hookimpl
from .types import Answer, Context, Example, Passage

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "ConfigurationError",
    "Context",
    "DataError",
    "Dataset",
    "Example",
    "IagbenchError",
    "Imaginer",
    "Metric",
    "Passage",
    "Reader",
    "UnknownNameError",
    "__version__",
    "hookimpl",
]
