"""Open-domain QA datasets: NQ-open, TriviaQA, WebQuestions, and any FiD/DPR question file.

Each reads local files (the layout of the shared data folder, or ``path=``) or, with
``source="hub"``, the Hugging Face hub. Ids are the record's own id where it has one, else
``{dataset}-{split}-{sha1(question.strip())[:10]}``, so the same question text gets the same
id whichever file or hub copy it came from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from iagbench.contract.components import Dataset
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Example

from . import formats, hub
from .formats import RecordError, StableIds, check_answers, check_question

DATA_ENV = "IAGBENCH_DATA"
SOURCES = ("files", "hub")


@dataclass(frozen=True)
class Split:
    """The files of one split, relative to the data folder, and what they are."""

    files: tuple[str, ...]
    note: str = ""


class QADataset(Dataset):
    """Questions from local files or from the hub; subclasses give the layout and hub defaults.

    Options: ``data_dir`` (default: env ``IAGBENCH_DATA``), ``path`` (read these files for the
    requested split instead of the layout; several joined with ``os.pathsep``), ``format``
    (``dpr-csv``, ``jsonl``, ``json``; detected when None), ``source`` (``files`` or ``hub``),
    ``hub_id``, ``hub_config`` (defaults to this dataset's config unless ``hub_id`` names another
    dataset; ``""`` means none), ``hub_split`` (overrides the split mapping) and ``cache_dir``
    (for ``datasets``).
    """

    name: ClassVar[str]
    layout: ClassVar[Mapping[str, Split]] = {}
    default_hub_id: ClassVar[str | None] = None
    default_hub_config: ClassVar[str | None] = None
    hub_splits: ClassVar[Mapping[str, str]] = {}
    hub_note: ClassVar[str] = ""
    any_split: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        path: str | os.PathLike[str] | None = None,
        format: str | None = None,
        source: str = "files",
        hub_id: str | None = None,
        hub_config: str | None = None,
        hub_split: str | None = None,
        cache_dir: str | None = None,
    ):
        if source not in SOURCES:
            raise ConfigurationError(
                f"dataset '{self.name}': source must be one of {', '.join(SOURCES)}, not '{source}'"
            )
        if source == "hub" and path:
            raise ConfigurationError(f"dataset '{self.name}': pass either path= or source=hub, not both")
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.paths = [Path(p).expanduser() for p in str(path).split(os.pathsep) if p] if path else []
        self.format = formats.check_format(format) if format else None
        self.source = source
        self.hub_id = hub_id or self.default_hub_id
        own_hub = bool(hub_id) and hub_id != self.default_hub_id
        self.hub_config = (hub_config or None) if own_hub or hub_config is not None else self.default_hub_config
        self.hub_split = hub_split
        self.cache_dir = cache_dir

    # ---- the Dataset interface ----

    def load(self, split: str) -> Iterable[Example]:
        """The examples of ``split``, in file (or hub) order."""
        self.check_split(split)
        ids = StableIds(self.name, split)
        if self.source == "hub":
            hub_id, config, hub_split = self.hub_target(split)
            rows = hub.load_split(hub_id, config, hub_split, self.cache_dir)
            where = f"hub dataset {hub_id} (config {config}, split {hub_split})"
            return hub.hub_examples(rows, self.parse_hub_row, ids, where)
        return self._read_files(self.files(split), ids)

    def describe(self, split: str) -> dict[str, Any]:
        """Where ``split`` comes from: each file with its sha256 and format, or the hub id, config and split."""
        self.check_split(split)
        if self.source == "hub":
            hub_id, config, hub_split = self.hub_target(split)
            return {"source": "hub", "hub_id": hub_id, "hub_config": config, "split": hub_split, "note": self.hub_note}
        files = [
            {"path": str(p.resolve()), "sha256": sha256(p), "format": self.format or formats.detect_format(p)}
            for p in self.files(split)
        ]
        note = "given with path=" if self.paths else self.layout[split].note
        return {"source": "files", "files": files, "note": note}

    # ---- files ----

    def check_split(self, split: str) -> None:
        if not self.any_split and split not in self.splits:
            raise ConfigurationError(
                f"dataset '{self.name}' has no split '{split}'; known splits: {', '.join(self.splits)}"
            )

    def files(self, split: str) -> list[Path]:
        """The files that hold ``split``, each checked to exist."""
        if self.paths:
            missing = [p for p in self.paths if not p.is_file()]
            if missing:
                raise ConfigurationError(
                    f"dataset '{self.name}' split '{split}': file {missing[0].resolve()} "
                    f"{formats.not_a_file(missing[0])}"
                )
            return self.paths
        if split not in self.layout:
            raise ConfigurationError(
                f"dataset '{self.name}' has no local file for split '{split}'; supply one with path=FILE "
                f"or read it from the hub with source=hub"
            )
        relative = self.layout[split].files
        root = self.data_dir or (Path(os.environ[DATA_ENV]).expanduser() if os.environ.get(DATA_ENV) else None)
        if root is None:
            raise ConfigurationError(
                f"dataset '{self.name}' split '{split}' reads {', '.join(relative)} from a data folder: "
                f"pass --data-dir (data_dir=) or set {DATA_ENV}"
            )
        paths = [root / name for name in relative]
        for p in paths:
            if not p.is_file():
                raise ConfigurationError(
                    f"dataset '{self.name}' split '{split}': expected file {p.resolve()} {formats.not_a_file(p)}"
                )
        return paths

    def _read_files(self, paths: list[Path], ids: StableIds) -> Iterator[Example]:
        for p in paths:
            yield from formats.read(p, ids, self.format)

    # ---- hub ----

    def hub_target(self, split: str) -> tuple[str, str | None, str]:
        """``(hub_id, hub_config, hub_split)`` for one of our splits."""
        if not self.hub_id:
            raise ConfigurationError(f"dataset '{self.name}' has no hub copy; pass hub_id= or use source=files")
        hub_split = self.hub_split or self.hub_splits.get(split)
        if hub_split is None:
            raise ConfigurationError(
                f"dataset '{self.name}': no hub split for split '{split}' of hub dataset '{self.hub_id}'; "
                f"pass hub_split= or supply a file with path="
            )
        return self.hub_id, self.hub_config, hub_split

    @staticmethod
    def parse_hub_row(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        """``(question, answers)`` of one hub row; subclasses fit their hub schema."""
        return check_question(hub.field(row, "question")), check_answers(hub.field(row, "answers"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class NaturalQuestions(QADataset):
    """NQ-open. ``test``: the 3,610 NQ-open evaluation questions; ``dev``: EfficientQA dev (1,800);
    ``train``: DPR's held-out NQ dev (8,757), the training questions available offline (not the
    87,925 NQ-open train questions, which only the hub has)."""

    name = "nq"
    layout = {
        "test": Split(
            ("nq/NQ-open.dev.jsonl",), "NQ-open evaluation set (3,610), the test split of open-domain QA papers"
        ),
        "dev": Split(("nq/NQ-open.efficientqa.dev.1.1.jsonl",), "EfficientQA dev (1,800)"),
        "train": Split(
            ("nq/nq-dev.qa.csv",),
            "DPR's NQ dev (8,757 questions held out from NQ train): the training questions available offline, "
            "not the full NQ-open train",
        ),
    }
    default_hub_id = "nq_open"
    default_hub_config = "nq_open"
    hub_splits = {"train": "train", "test": "validation"}
    hub_note = "NQ-open on the hub: train = the 87,925 NQ-open train questions, test = validation (3,610)"

    @staticmethod
    def parse_hub_row(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        return check_question(hub.field(row, "question")), check_answers(hub.field(row, "answer"), "answer")


class TriviaQA(QADataset):
    """Open-domain TriviaQA. ``test``: the unfiltered dev set (11,313); ``train``: DPR's held-out
    TriviaQA dev (8,837), the training questions available offline; ``dev``: pass ``path=`` or use
    the hub. Questions are DPR's csv text as the csv reader gives it (some keep a second layer of
    quoting from DPR's file)."""

    name = "triviaqa"
    layout = {
        "test": Split(("triviaqa/trivia-test.qa.csv",), "TriviaQA unfiltered dev = open-domain TriviaQA test (11,313)"),
        "train": Split(
            ("triviaqa/trivia-dev.qa.csv",),
            "DPR's TriviaQA dev (8,837 questions held out from train): the training questions available offline",
        ),
    }
    default_hub_id = "trivia_qa"
    default_hub_config = "unfiltered.nocontext"
    hub_splits = {"train": "train", "test": "validation"}
    hub_note = "answers = answer.aliases, then answer.value if not among them"

    @staticmethod
    def parse_hub_row(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        answer = hub.field(row, "answer")
        if not isinstance(answer, Mapping):
            raise RecordError("answer", "expected an object with 'aliases' and 'value'")
        for key in ("aliases", "value"):
            if key not in answer:
                raise RecordError(f"answer.{key}", "missing from the hub row")
        aliases = answer["aliases"]
        if not isinstance(aliases, list):
            raise RecordError("answer.aliases", "expected a list of strings")
        answers = aliases if answer["value"] in aliases else [*aliases, answer["value"]]
        return check_question(hub.field(row, "question")), check_answers(answers, "answer.aliases")


class WebQuestions(QADataset):
    """WebQuestions. ``test``: 2,032 questions; ``train``: trainmodel + val + devtest (3,778 together);
    ``dev``: pass ``path=`` or use the hub."""

    name = "webq"
    layout = {
        "test": Split(("webq/test.json",), "WebQuestions test (2,032)"),
        "train": Split(
            ("webq/trainmodel.json", "webq/val.json", "webq/devtest.json"),
            "WebQuestions train: trainmodel + val + devtest (3,778 together)",
        ),
    }
    default_hub_id = "web_questions"
    hub_splits = {"train": "train", "test": "test"}


class FidJson(QADataset):
    """Any FiD/DPR question file (JSON array or JSON lines, gzip too) given with ``path=``, with
    its ``ctxs`` as passages; any split name is accepted."""

    name = "fid-json"
    any_split = True

    def files(self, split: str) -> list[Path]:
        if not self.paths:
            raise ConfigurationError(
                f"dataset '{self.name}' reads the file given with path=FILE (several joined with '{os.pathsep}'); pass one"
            )
        return super().files(split)

    def hub_target(self, split: str) -> tuple[str, str | None, str]:
        if not self.hub_id:
            raise ConfigurationError(
                f"dataset '{self.name}' reads local files; pass path=FILE, or hub_id= with source=hub"
            )
        return super().hub_target(split)
