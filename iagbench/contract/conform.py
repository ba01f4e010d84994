"""The documented minimum of a component is enough: its required members are checked, the rest comes from the base class.

A factory's product that does not subclass its kind's base class (``Imaginer``...) is wrapped in an adapter that
is one: the product's own members are used where it has them, the base class's defaults (``describe() -> {}``,
``splits``...) where it has not. A product that subclasses ``Trainable`` or ``Distillable`` stays one.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from iagbench.contract.components import Dataset, Distillable, Imaginer, Metric, Reader, Trainable
from iagbench.contract.errors import ConfigurationError

BASES: dict[str, type] = {"datasets": Dataset, "imaginers": Imaginer, "readers": Reader, "metrics": Metric}
METHODS = {"datasets": "load", "imaginers": "imagine", "readers": "answer", "metrics": "score"}
ATTRIBUTES = {"metrics": ("name", "version")}  # set by a constructor, maybe: checked on products only
DECLARED = {"imaginers": "provides", "readers": "accepts"}


def check_class(kind: str, label: str, factory: Any) -> None:
    """Refuse a factory class that cannot build a conforming product (an abstract subclass, a missing method)."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    if not isinstance(factory, type):
        return  # a function: its product is checked when built
    if inspect.isabstract(factory):
        missing = sorted(getattr(factory, "__abstractmethods__", ()))
        raise ConfigurationError(f"{label}: {factory.__name__} does not implement {_quoted(missing)}")
    _check_method(kind, label, factory, factory.__name__)


def conform(kind: str, label: str, product: Any, declared: Any = None) -> Any:
    """``product`` checked for its kind's required members; wrapped in an adapter if it does not subclass the base."""
    _check_method(kind, label, product, type(product).__name__)
    for attribute in ATTRIBUTES.get(kind, ()):
        if not hasattr(product, attribute):
            raise ConfigurationError(f"{label}: {type(product).__name__} has no attribute '{attribute}'")
    base = BASES[kind]
    if isinstance(product, base) or kind == "metrics":  # Metric has no defaults to add
        return product
    adapter = _adapter_class(kind, type(product), isinstance(product, Trainable), isinstance(product, Distillable))
    return adapter(product, declared)


def _check_method(kind: str, label: str, thing: Any, name: str) -> None:
    method = METHODS[kind]
    if not callable(getattr(thing, method, None)):
        raise ConfigurationError(f"{label}: {name} has no method '{method}' (the one a {kind[:-1]} must implement)")


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


class _Adapted:
    """Forwards every attribute to the product; the forwarders below give the base class's defaults."""

    def __init__(self, product: Any, declared: Any):
        object.__setattr__(self, "_product", product)
        object.__setattr__(self, "_declared", declared)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_product", "_declared"):
            raise AttributeError(name)
        return getattr(self._product, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._product, name, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} adapted to {type(self).__mro__[2].__name__}: {self._product!r}>"


def _method(name: str, default: Any) -> Any:
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        own = getattr(self._product, name, None)
        if callable(own):
            return own(*args, **kwargs)
        return default(self, *args, **kwargs)

    forward.__name__ = name
    return forward


def _attribute(name: str, default: Any, declared: str | None) -> property:
    def get(self: Any) -> Any:
        if hasattr(self._product, name):
            return getattr(self._product, name)
        return self._declared if name == declared and self._declared is not None else default

    return property(get)


@functools.cache
def _adapter_class(kind: str, product_type: type, trainable: bool, distillable: bool) -> type:
    """An adapter class named as the product's class (error messages name it), for one product class."""
    bases = (BASES[kind],) + ((Trainable,) if trainable else ()) + ((Distillable,) if distillable else ())
    namespace: dict[str, Any] = {"__module__": product_type.__module__, "__qualname__": product_type.__qualname__}
    for base in reversed(bases):
        for name, member in vars(base).items():
            if name.startswith("_"):
                continue
            if inspect.isfunction(member):
                namespace[name] = _method(name, member)
            elif not isinstance(member, (property, classmethod, staticmethod)):
                namespace[name] = _attribute(name, member, DECLARED.get(kind))
    return type(product_type.__name__, (_Adapted, *bases), namespace)
