"""Composite imaginers: ``--imaginer a+b[+c]`` merges what several imaginers give each question.

Design notes: docs/internals.md#iagbenchcontractcomposepy
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from iagbench.contract.components import Imaginer, Trainable
from iagbench.contract.conform import check_class
from iagbench.contract.entry import Entry
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Context, Example

SEPARATOR = "+"


def composite_entry(registry: Any, name: str) -> Any:
    """The registry entry of ``a+b[+c]``: its parts' entries, checked to merge, under a composite factory."""
    written = name.split(SEPARATOR)
    if any(not part.strip() for part in written):
        raise ConfigurationError(f"imaginer '{name}': an empty part; compose imaginers as a+b[+c]")
    parts = [(part.strip(), registry.get(part.strip())) for part in written]
    seen: dict[str, str] = {}
    for part, entry in parts:
        if entry.name in seen:
            raise ConfigurationError(
                f"imaginer '{name}': '{entry.name}' appears twice (as '{seen[entry.name]}' and '{part}')"
            )
        seen[entry.name] = part
    factory = CompositeFactory(name, tuple(_Part(written_name, entry) for written_name, entry in parts))
    canonical = SEPARATOR.join(entry.name for _, entry in parts)
    plugins = tuple(dict.fromkeys(entry.plugin for _, entry in parts))
    description = "composite: " + "; ".join(f"{entry.name}: {entry.description}" for _, entry in parts)
    return Entry(
        registry.kind, canonical, factory, SEPARATOR.join(plugins), (), description, parts=tuple(e for _, e in parts)
    )


@dataclass(frozen=True)
class _Part:
    written: str  # the name as the user wrote it (an alias, maybe): also accepted as an option prefix
    entry: Any

    @property
    def name(self) -> str:
        return self.entry.name

    def takes(self, option: str) -> bool:
        try:
            parameters = inspect.signature(self.entry.load()).parameters.values()
        except (TypeError, ValueError):
            return True
        return any(p.name == option or p.kind is p.VAR_KEYWORD for p in parameters)

    def options(self) -> list[str]:
        try:
            parameters = inspect.signature(self.entry.load()).parameters.values()
        except (TypeError, ValueError):
            return []
        return [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


class CompositeFactory:
    """Builds a `CompositeImaginer` from prefixed options; declares the union of its parts' ``provides``."""

    def __init__(self, name: str, parts: tuple[_Part, ...]):
        self.name, self.parts = name, parts
        provides: set[str] = set()
        adapters = []
        for part in parts:
            declared = frozenset(part.entry.declared("provides"))
            if "adapter" in declared:
                adapters.append(part.name)
            provides |= declared
        if len(adapters) > 1:
            raise ConfigurationError(
                f"imaginer '{name}': {' and '.join(repr(a) for a in adapters)} both provide adapters, and a reader takes "
                "one adapter per question: they cannot be merged"
            )
        self.provides = frozenset(provides)

    def split_options(self, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Per part name, its options: the shared ones it takes, then its prefixed ones (which win)."""
        shared: dict[str, Any] = {}
        prefixed: dict[str, dict[str, Any]] = {part.name: {} for part in self.parts}
        for key, value in options.items():
            prefix, dot, option = key.partition(".")
            if not dot:
                shared[key] = value
                continue
            part = next((p for p in self.parts if prefix in (p.name, p.written, *p.entry.aliases)), None)
            if part is None:
                raise ConfigurationError(
                    f"imaginer '{self.name}': option '{key}' names no part (parts: {', '.join(p.name for p in self.parts)})"
                )
            prefixed[part.name][option] = value
        split: dict[str, dict[str, Any]] = {part.name: {} for part in self.parts}
        for key, value in shared.items():
            takers = [part for part in self.parts if part.takes(key)]
            if not takers:
                known = "; ".join(f"{p.name}: {', '.join(p.options()) or '(none)'}" for p in self.parts)
                raise ConfigurationError(f"imaginer '{self.name}': no part takes option '{key}' (options: {known})")
            for part in takers:
                split[part.name][key] = value
        for name, values in prefixed.items():
            split[name].update(values)
        return split

    def preflight(self, pairing: Any) -> None:
        """Each part's class checked, its options too, and its ``preflight`` hook called with them
        (`iagbench.contract.preflight`)."""
        split = self.split_options(dict(pairing.imaginer_options))
        for part in self.parts:
            try:
                check_class(part.entry.kind, part.entry.label, part.entry.load())
                options = part.entry.options(split[part.name])
                hook = part.entry.hook("preflight")
                if hook is not None:
                    hook(replace(pairing, imaginer=part.name, imaginer_options=options))
            except ConfigurationError as error:
                raise ConfigurationError(f"imaginer '{self.name}', part '{part.name}': {error}") from None

    def __call__(self, **options: Any) -> CompositeImaginer:
        split = self.split_options(options)
        built = []
        for part in self.parts:
            try:
                built.append((part.name, part.entry.build(**split[part.name])))
            except ConfigurationError as error:
                raise ConfigurationError(f"imaginer '{self.name}', part '{part.name}': {error}") from None
        return CompositeImaginer(self.name, built)


class CompositeImaginer(Imaginer, Trainable):
    """Several imaginers' contexts merged into one per question (see the module docstring)."""

    def __init__(self, name: str, parts: Sequence[tuple[str, Imaginer]]):
        self.name = name
        self.parts = list(parts)
        self.provides = frozenset().union(*(frozenset(part.provides) for _, part in self.parts))

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        per_part: list[list[Context]] = []
        for name, part in self.parts:
            if getattr(part, "reads_passages", False):  # given the passages of the parts before it
                contexts = part.imagine(examples, passages=_passages_so_far(per_part, len(examples)))  # type: ignore[call-arg]
            else:
                contexts = part.imagine(examples)
            if len(contexts) != len(examples):
                raise ConfigurationError(
                    f"imaginer '{name}' returned {len(contexts)} contexts for {len(examples)} examples"
                )
            per_part.append(contexts)
        return [self.merge([contexts[row] for contexts in per_part]) for row in range(len(examples))]

    def merge(self, contexts: Sequence[Context]) -> Context:
        adapters = [(name, c.adapter) for (name, _), c in zip(self.parts, contexts) if c.adapter is not None]
        if len(adapters) > 1:
            raise ConfigurationError(
                f"imaginer '{self.name}': {' and '.join(repr(n) for n, _ in adapters)} both gave an adapter for one "
                "question: they cannot be merged"
            )
        passages = tuple(p for c in contexts for p in c.passages)
        costs = [c.cost for c in contexts if isinstance(c.cost, dict)]
        cost = _summed(costs) if costs else None  # the parts' costs added up (docs/cost.md)
        return Context(passages=passages, adapter=adapters[0][1] if adapters else None, cost=cost)

    def describe(self) -> dict[str, Any]:
        return {"composite": self.name, "parts": [{"name": name, **part.describe()} for name, part in self.parts]}

    # Training: through the one part with trainable weights.

    def trainable_parts(self) -> list[tuple[str, Imaginer]]:
        return [(n, p) for n, p in self.parts if isinstance(p, Trainable) and p.trainable_module() is not None]

    def trainable_part(self) -> Imaginer | None:
        parts = self.trainable_parts()
        if len(parts) > 1:
            raise ConfigurationError(
                f"imaginer '{self.name}': parts {' and '.join(repr(n) for n, _ in parts)} are both trainable; "
                "iagbench train trains one trainable part of a composite (train them separately)"
            )
        return parts[0][1] if parts else None

    def trainable_module(self) -> Any:
        part = self.trainable_part()
        return part.trainable_module() if part is not None else None  # type: ignore[attr-defined]

    def train(self, mode: bool = True) -> None:
        for _, part in self.trainable_parts():
            part.train(mode)  # type: ignore[attr-defined]

    def prepare(self, examples: Sequence[Example]) -> None:
        """Only the trainable part fits on the training set: a frozen part keeps what it loaded (and may need no
        training data at all, as a frozen imagine its pairs)."""
        for _, part in self.trainable_parts():
            if getattr(part, "reads_passages", False):  # its features read the earlier parts' passages
                part.prepare(examples, passages=self._passages_before(part, examples))  # type: ignore[attr-defined]
            else:
                part.prepare(examples)  # type: ignore[attr-defined]

    def prepare_on_resume(self) -> bool:
        part = self.trainable_part()
        return isinstance(part, Trainable) and part.prepare_on_resume()

    def _passages_before(self, target: Imaginer, examples: Sequence[Example], chunk: int = 256) -> list[tuple]:
        """Each example's passages from the parts before ``target``, imagined without gradients, ``chunk`` at a time."""
        import torch

        before = [part for _, part in self.parts[: [p for _, p in self.parts].index(target)]]
        passages: list[tuple] = []
        with torch.no_grad():
            for start in range(0, len(examples), chunk):
                batch = examples[start : start + chunk]
                per_part = [part.imagine(batch) for part in before]
                passages.extend(_passages_so_far(per_part, len(batch)))
        return passages

    def has_loss(self) -> bool:
        part = self.trainable_part()
        return isinstance(part, Trainable) and part.has_loss()

    def loss(self, examples: Sequence[Example], contexts: Sequence[Context]) -> Any:
        part = self.trainable_part()
        if not (isinstance(part, Trainable) and part.has_loss()):
            return super().loss(examples, contexts)
        return part.loss(examples, contexts)


def _summed(costs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Numbers at the same place in nested dicts added up; a place only some dicts have is kept as it is."""
    total: dict[str, Any] = {}
    for cost in costs:
        for key, value in cost.items():
            if isinstance(value, dict):
                total[key] = _summed([total.get(key, {}), value])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def _passages_so_far(per_part: Sequence[Sequence[Context]], n: int) -> list[tuple]:
    """Each of ``n`` examples' passages from the parts imagined so far, in part order."""
    return [tuple(p for contexts in per_part for p in contexts[row].passages) for row in range(n)]
