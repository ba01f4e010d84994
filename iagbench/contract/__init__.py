"""The plugin contract: the data model, component interfaces, hook specs, registry, plugin manager, errors."""
