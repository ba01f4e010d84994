"""iagbench: a plugin-based benchmark harness for open-domain question answering."""

from iagbench.contract.adapters import LoRAAdapter
from iagbench.contract.components import Dataset, Distillable, Exportable, Imaginer, Metric, Reader, Trainable
from iagbench.contract.errors import ConfigurationError, DataError, IagbenchError, UnknownNameError
from iagbench.contract.hookspecs import hookimpl
from iagbench.contract.types import Answer, Context, Example, Passage
from iagbench.version import __version__

__all__ = [
    "Answer",
    "ConfigurationError",
    "Context",
    "DataError",
    "Dataset",
    "Distillable",
    "Example",
    "Exportable",
    "IagbenchError",
    "Imaginer",
    "LoRAAdapter",
    "Metric",
    "Passage",
    "Reader",
    "Trainable",
    "UnknownNameError",
    "__version__",
    "hookimpl",
]
