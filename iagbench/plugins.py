"""Old import path, kept for code written against it: the module is now `iagbench.contract.plugins`."""

from iagbench.contract.plugins import Plugins, default_plugins, load_plugins

__all__ = ["Plugins", "default_plugins", "load_plugins"]
