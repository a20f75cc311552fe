"""Labelled downstream tasks: CSV/TSV, JSONL and CoNLL files (or a demo dataset) -> fixed splits.

A task's splits are part of its identity: when dev/test files are absent they are carved from
train by a hash of each example's inputs, so the same example always lands in the same split,
whatever else the file holds (the split is stable when the file grows, and duplicates never
straddle train and test). The carving is stratified: a label that the hash put only in dev/test
but that has two or more examples gets its lowest-hash carrier moved back to train.
`max_examples` keeps the first examples of each split in hash order, the capped train first
taking one carrier of every train label (rarest first) so the cap loses no label.

A label that still occurs only outside train (a tag seen once, in test) is kept: the head cannot
predict it, so it is scored as an error, and `TaskData.unseen_labels` counts it per split.
Every problem is a TaskDataError naming the file and line; nothing is silently dropped.

Demo datasets name their own columns (`demo_data.task_fields`) and the split of each task file
(`demo_data.task_splits`): pos-oanc is [OANC train, WSJ gold test], so a POS task is simply
`{name: pos, kind: tag, dataset: pos-oanc}` (dev carved from OANC by hash).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pipelines import demo_data
from pipelines.data import task_splits
from pipelines.data.ingest.charsets import open_text, undecodable_file
from pretrainlab.config import PretrainlabError, TaskSpec
from storage.hashing import SHORT, canonical_json, sha256_bytes

SPLITS = ("train", "dev", "test")
KINDS = ("classify", "pair", "tag", "wic")
FORMAT_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".conll": "conll",
    ".txt": "conll",
}
WIC_OFFSETS = ("start1", "end1", "start2", "end2")
SUPERGLUE_WIC = {"text_field": "sentence1", "text_b_field": "sentence2"}
TRUE_LABELS = {"1", "true", "t"}
FALSE_LABELS = {"0", "false", "f"}


class TaskDataError(PretrainlabError, ValueError):
    """A task file that cannot be used as given; the message names the file, line and fix."""


@dataclass(frozen=True)
class Example:
    text_a: str = ""  # classify / pair / wic: first text
    text_b: str = ""  # pair / wic: second text
    words: tuple[str, ...] = ()  # tag: the words (already split)
    tags: tuple[str, ...] = ()  # tag: one tag per word
    label: str = ""  # classify / pair / wic: the label as a string ("0"/"1" for wic)
    span_a: tuple[int, int] = (0, 0)  # wic: char offsets [start, end) of the target word in text_a
    span_b: tuple[int, int] = (0, 0)  # wic: the same in text_b


@dataclass(frozen=True)
class TaskData:
    name: str
    kind: str  # "classify" | "pair" | "tag" | "wic"
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...]  # sorted labels of the train split: the classes a head predicts
    fingerprint: str  # hash of the three splits' content (for cache keys)
    unseen: tuple[str, ...] = ()  # sorted labels found only in dev/test: scored, never predicted
    # split -> how many items (examples; words when tagging) carry an unseen label
    unseen_labels: dict[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class _Located:
    """An example and where it came from, for error messages."""

    example: Example
    where: str  # "path:line"

    @cached_property
    def keys(self) -> task_splits.Key:
        """Its input hash (computed once: carving and capping both sort by it), then its labels
        to order examples with the same inputs."""
        return _input_key(self.example), (self.example.tags, self.example.label)


# --- hashing ---------------------------------------------------------------------------------


def _input_key(example: Example) -> str:
    """Hash of what the model sees (not the label): decides the split and the cap order."""
    inputs = [example.text_a, example.text_b, example.words, example.span_a, example.span_b]
    return sha256_bytes(canonical_json(inputs).encode("utf-8"))


def _content_key(example: Example) -> str:
    fields = [example.text_a, example.text_b, example.words, example.tags, example.label]
    fields += [example.span_a, example.span_b]
    return sha256_bytes(canonical_json(fields).encode("utf-8"))


def fingerprint(kind: str, splits: dict[str, Sequence[Example]]) -> str:
    """Hash of the kind and every example of every split, in order."""
    parts = [kind] + [f"{s}:{_content_key(e)}" for s in SPLITS for e in splits[s]]
    return sha256_bytes("\n".join(parts).encode("utf-8"))[:SHORT]


# --- reading files ---------------------------------------------------------------------------


def _format(path: Path, declared: str, kind: str) -> str:
    if kind == "tag":
        if declared not in ("auto", "conll"):
            raise TaskDataError(f"{path}: a tag task reads CoNLL files, not format {declared!r}")
        return "conll"
    fmt = declared if declared != "auto" else FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt == "csv" and path.suffix.lower() == ".tsv":
        fmt = "tsv"
    if fmt not in ("csv", "tsv", "jsonl"):
        raise TaskDataError(
            f"{path}: a {kind} task needs a CSV/TSV or JSONL file (.csv, .tsv, .jsonl, .json); "
            f"got {path.suffix or 'no extension'} (format {declared!r}); set `format:` or "
            "rename the file"
        )
    return fmt


def _delimited(path: Path, delimiter: str, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open_text(path, encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            return
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise TaskDataError(
                    f"{path}:{reader.line_num}: row has {len(row)} fields but the header "
                    f"{header} has {len(header)}; quote fields that contain the delimiter"
                )
            yield reader.line_num, dict(zip(header, row, strict=True))


def _jsonl(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open_text(path, encoding) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise TaskDataError(
                    f"{path}:{number}: malformed JSON ({error}); each line must be one JSON object"
                ) from None
            if not isinstance(record, dict):
                raise TaskDataError(
                    f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}"
                )
            yield number, record


def _records(path: Path, fmt: str, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if fmt == "jsonl":
        return _jsonl(path, encoding)
    return _delimited(path, "\t" if fmt == "tsv" else ",", encoding)


def _field(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record:
        raise TaskDataError(
            f"{where}: missing column {name!r}; the columns are {sorted(record)}. Name the right "
            "one in the task spec (text_field / text_b_field / label_field)"
        )
    value = record[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TaskDataError(f"{where}: column {name!r} is empty; fill it or remove the row")
    return value


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value).strip()


def _binary(value: Any, where: str) -> str:
    text = _label(value).lower()
    if text in TRUE_LABELS:
        return "1"
    if text in FALSE_LABELS:
        return "0"
    raise TaskDataError(
        f"{where}: a word-in-context label must be true/false or 1/0, got {value!r}"
    )


def _span(record: dict[str, Any], start: str, end: str, text: str, where: str) -> tuple[int, int]:
    try:
        span = int(_field(record, start, where)), int(_field(record, end, where))
    except (TypeError, ValueError):
        raise TaskDataError(
            f"{where}: {start}/{end} must be integer char offsets, got "
            f"{record[start]!r}/{record[end]!r}"
        ) from None
    if not 0 <= span[0] < span[1] <= len(text):
        raise TaskDataError(
            f"{where}: target span {start}={span[0]}, {end}={span[1]} is outside the sentence "
            f"({len(text)} chars: {text[:60]!r}); offsets are [start, end) in characters"
        )
    return span


def _wic_fields(record: dict[str, Any], fields: dict[str, str]) -> dict[str, str]:
    """The spec's text fields, or SuperGLUE's sentence1/sentence2 when those are what's there."""
    if fields["text_field"] not in record and SUPERGLUE_WIC["text_field"] in record:
        return {**fields, **SUPERGLUE_WIC}
    return fields


def _example(kind: str, record: dict[str, Any], fields: dict[str, str], where: str) -> Example:
    if kind == "wic":
        fields = _wic_fields(record, fields)
    text_a = str(_field(record, fields["text_field"], where))
    text_b = str(_field(record, fields["text_b_field"], where)) if kind != "classify" else ""
    raw_label = _field(record, fields["label_field"], where)
    if kind != "wic":
        return Example(text_a=text_a, text_b=text_b, label=_label(raw_label))
    return Example(
        text_a=text_a,
        text_b=text_b,
        label=_binary(raw_label, where),
        span_a=_span(record, "start1", "end1", text_a, where),
        span_b=_span(record, "start2", "end2", text_b, where),
    )


def _conll(path: Path, encoding: str) -> Iterator[_Located]:
    """`token<TAB>tag` (or space-separated) lines, a blank line between sentences.

    The column count is fixed by the first token line; the word is the first column and the
    tag the last (so CoNLL-2003's four columns read as word + NER tag).
    """
    columns = 0
    words: list[str] = []
    tags: list[str] = []
    start = 0
    with open_text(path, encoding) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                if words:
                    yield _Located(Example(words=tuple(words), tags=tuple(tags)), f"{path}:{start}")
                words, tags = [], []
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            columns = columns or len(parts)
            if len(parts) < 2 or len(parts) != columns:
                raise TaskDataError(
                    f"{path}:{number}: {len(parts)} field(s) in {line!r}; expected "
                    f"{max(columns, 2)} (token<TAB>tag per line, a blank line between sentences)"
                )
            if not parts[0] or not parts[-1]:
                raise TaskDataError(f"{path}:{number}: empty token or tag in {line!r}")
            start = start if words else number
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        yield _Located(Example(words=tuple(words), tags=tuple(tags)), f"{path}:{start}")


def _read(path: Path, kind: str, fmt: str, fields: dict[str, str], enc: str) -> list[_Located]:
    if not path.is_file():
        raise TaskDataError(f"task file {path} does not exist")
    try:
        if fmt == "conll":
            examples = list(_conll(path, enc))
        else:
            examples = [
                _Located(_example(kind, record, fields, f"{path}:{number}"), f"{path}:{number}")
                for number, record in _records(path, fmt, enc)
            ]
    except UnicodeDecodeError:
        raise TaskDataError(undecodable_file(path, enc, "task")) from None
    if not examples:
        raise TaskDataError(f"{path}: the file holds no examples (empty, or a header only)")
    return examples


# --- splits ----------------------------------------------------------------------------------


def _sources(spec: TaskSpec, data_dir: Path | None) -> tuple[dict[str, list[Path]], str, dict]:
    """split -> files, the declared format, and the field names to read."""
    fields = {f: getattr(spec, f) for f in ("text_field", "text_b_field", "label_field")}
    if spec.dataset is None:
        files = {s: [Path(p).expanduser()] for s in SPLITS if (p := getattr(spec, s))}
        return files, spec.format, fields
    dataset_kind = demo_data.task_kind(spec.dataset)
    if dataset_kind and dataset_kind != spec.kind:
        raise TaskDataError(
            f"task {spec.name!r}: demo dataset {spec.dataset!r} is a {dataset_kind} task, not "
            f"{spec.kind}; set `kind: {dataset_kind}`"
        )
    paths = demo_data.dataset_files(spec.dataset, data_dir, role="task")
    files: dict[str, list[Path]] = defaultdict(list)
    for split, path in zip(demo_data.task_splits(spec.dataset), paths, strict=True):
        files[split].append(path)
    for name, column in demo_data.task_fields(spec.dataset).items():
        if name not in spec.model_fields_set:  # what the spec names explicitly wins
            fields[name] = column
    declared = spec.format if spec.format != "auto" else demo_data.task_format(spec.dataset)
    return dict(files), declared, fields


def _labels_of(example: Example) -> Iterable[str]:
    return example.tags if example.words else (example.label,)


def _keyed(items: Sequence[_Located]) -> tuple[list[task_splits.Key], list[frozenset[str]]]:
    """Each example as `task_splits` sees it: its hash keys and its labels."""
    return [item.keys for item in items], [frozenset(_labels_of(item.example)) for item in items]


def _carve(
    examples: list[_Located], fractions: dict[str, float], given: Counter[str]
) -> dict[str, list[_Located]]:
    """Train and the missing dev/test splits carved from the train file (see task_splits)."""
    where = task_splits.carve(*_keyed(examples), fractions, given)
    return {s: [item for item, w in zip(examples, where, strict=True) if w == s] for s in SPLITS}


def _cap(items: list[_Located], limit: int | None, cover: bool) -> list[_Located]:
    if limit is None or len(items) <= limit:
        return items
    return [items[i] for i in task_splits.cap(*_keyed(items), limit, cover)]


def _check_splits(spec: TaskSpec, splits: dict[str, list[_Located]]) -> None:
    """Every split has examples and train at least two labels; dev/test labels need not be in
    train (they are scored as errors)."""
    for split in SPLITS:
        if not splits[split]:
            how = (
                "lower dev_fraction / test_fraction"
                if split == "train"
                else f"raise {split}_fraction"
            )
            raise TaskDataError(
                f"task {spec.name!r}: the {split} split is empty; give a {split} file, add "
                f"examples or {how}"
            )
    seen = {label for item in splits["train"] for label in _labels_of(item.example)}
    if len(seen) < 2:
        raise TaskDataError(
            f"task {spec.name!r}: the train data has a single label {sorted(seen)}; a task "
            "needs at least two (check label_field)"
        )


def _unseen(examples: dict[str, tuple[Example, ...]]) -> tuple[set[str], dict[str, Counter]]:
    """The train labels, and per dev/test split the count of each label train never has."""
    labels = {label for example in examples["train"] for label in _labels_of(example)}
    unseen = {
        split: Counter(
            label
            for example in examples[split]
            for label in _labels_of(example)
            if label not in labels
        )
        for split in ("dev", "test")
    }
    return labels, unseen


def task_files(spec: TaskSpec, data_dir: Path | None = None) -> list[Path]:
    """Every file a task reads: what its results depend on besides the code."""
    files, _, _ = _sources(spec, data_dir)
    return [path for split in SPLITS for path in files.get(split, [])]


def load_task(spec: TaskSpec, data_dir: Path | None = None) -> TaskData:
    """Read a task's files (or demo dataset) into fixed, hashed train/dev/test splits."""
    if spec.kind not in KINDS:
        raise TaskDataError(f"task {spec.name!r}: unknown kind {spec.kind!r}; one of {KINDS}")
    if spec.dev_fraction + spec.test_fraction >= 1:
        raise TaskDataError(
            f"task {spec.name!r}: dev_fraction + test_fraction = "
            f"{spec.dev_fraction + spec.test_fraction:g} leaves no train data; keep it below 1"
        )
    files, declared, fields = _sources(spec, data_dir)
    raw = {
        split: [
            item
            for path in files.get(split, [])
            for item in _read(
                path, spec.kind, _format(path, declared, spec.kind), fields, spec.encoding
            )
        ]
        for split in SPLITS
    }
    missing = {s for s in ("dev", "test") if not files.get(s)}
    if missing:
        fractions = {s: getattr(spec, f"{s}_fraction") for s in missing}
        given = Counter(  # examples per label in the dev/test files given as such
            label
            for s in {"dev", "test"} - missing
            for item in raw[s]
            for label in set(_labels_of(item.example))
        )
        carved = _carve(raw["train"], fractions, given)
        raw = {s: raw[s] if s not in missing and s != "train" else carved[s] for s in SPLITS}
    splits = {s: _cap(raw[s], spec.max_examples, cover=s == "train") for s in SPLITS}
    _check_splits(spec, splits)
    examples = {s: tuple(item.example for item in splits[s]) for s in SPLITS}
    labels, unseen = _unseen(examples)
    return TaskData(
        name=spec.name,
        kind=spec.kind,
        train=examples["train"],
        dev=examples["dev"],
        test=examples["test"],
        labels=tuple(sorted(labels)),
        fingerprint=fingerprint(spec.kind, examples),
        unseen=tuple(sorted(set(unseen["dev"]) | set(unseen["test"]))),
        unseen_labels={split: sum(counts.values()) for split, counts in unseen.items()},
    )


# --- label budgets ---------------------------------------------------------------------------


def _seeded_order(examples: Sequence[Example], seed: int) -> list[int]:
    """A permutation fixed by the seed and each example's content (not its position)."""
    occurrence: Counter[str] = Counter()
    keys = []
    for example in examples:
        content = _content_key(example)
        occurrence[content] += 1
        keys.append(sha256_bytes(f"{seed}:{content}:{occurrence[content]}".encode()))
    return sorted(range(len(examples)), key=keys.__getitem__)


def _quotas(counts: dict[str, int], budget: int) -> dict[str, int]:
    """Proportional shares (largest remainder); every class gets one when the budget allows."""
    total = sum(counts.values())
    exact = {label: budget * n / total for label, n in counts.items()}
    quotas = {label: int(share) for label, share in exact.items()}
    by_remainder = sorted(counts, key=lambda label: (quotas[label] - exact[label], label))
    for label in by_remainder[: budget - sum(quotas.values())]:
        quotas[label] += 1
    if budget >= len(counts):
        for label in sorted(counts):
            if quotas[label] == 0:
                donor = max(quotas, key=lambda name: (quotas[name], name))
                quotas[donor] -= 1
                quotas[label] = 1
    return quotas


def take_budget(
    examples: Sequence[Example], budget: int | Literal["all"], seed: int
) -> tuple[Example, ...]:
    """`budget` training examples, stratified by label (tag tasks: sentences), fixed per seed."""
    if budget == "all":
        return tuple(examples)
    if not isinstance(budget, int) or budget < 1:
        raise TaskDataError(f"label budget must be a positive integer or 'all', got {budget!r}")
    if budget > len(examples):
        raise TaskDataError(
            f"label budget {budget} is larger than the train set: the max is {len(examples)} "
            "(use 'all' or a smaller budget)"
        )
    order = _seeded_order(examples, seed)
    if any(example.words for example in examples):
        chosen = order[:budget]
    else:
        by_label: dict[str, list[int]] = defaultdict(list)
        for index in order:
            by_label[examples[index].label].append(index)
        quotas = _quotas({label: len(v) for label, v in by_label.items()}, budget)
        picked = {i for label, indices in by_label.items() for i in indices[: quotas[label]]}
        chosen = [i for i in order if i in picked]
    return tuple(examples[i] for i in chosen)
