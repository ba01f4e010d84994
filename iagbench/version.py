"""The iagbench version, recorded in every run and training folder."""

__version__ = "0.1.0"
