"""The model families: the one list of them that every stage reads.

A family is a way to pretrain on the corpus. Adding one means a record here, then its module
under pipelines/models and a runner in pipelines/training/pretraining.py; every per-family
table elsewhere is built with `per_family`, which refuses a table that misses a family or names
one that does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar


@dataclass(frozen=True)
class TokenizerInfo:
    name: str  # the spec's section under `tokenizers:`
    kind: str  # the tokenizers-library model it trains: wordpiece | bpe | wordlevel


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    tokenizer: str  # a TokenizerInfo name: families that share one share its token shards
    language_model: bool  # predicts tokens: can continue training on a task's text (adaptation)
    torch: bool  # trains with the shared torch loop (and torchrun); word2vec is gensim


# In the order of the spec's sections, which is also the order stages run them in.
TOKENIZERS = (
    TokenizerInfo("bert", "wordpiece"),
    TokenizerInfo("gpt", "bpe"),
    TokenizerInfo("word", "wordlevel"),
)
FAMILIES = (
    FamilyInfo("word2vec", tokenizer="word", language_model=False, torch=False),
    FamilyInfo("elmo", tokenizer="word", language_model=True, torch=True),
    FamilyInfo("gpt", tokenizer="gpt", language_model=True, torch=True),
    FamilyInfo("bert", tokenizer="bert", language_model=True, torch=True),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)
TOKENIZER_NAMES = tuple(t.name for t in TOKENIZERS)
Family = Literal[FAMILY_NAMES]  # type: ignore[valid-type]  # the spec validates names with it
ADAPTABLE = tuple(f.name for f in FAMILIES if f.language_model)
TORCH_FAMILIES = tuple(f.name for f in FAMILIES if f.torch)
# Names a user's checkpoint cannot take: rows would not tell them apart.
RESERVED_NAMES = (*FAMILY_NAMES, "baseline")

TOKENIZER_OF_FAMILY = {f.name: f.tokenizer for f in FAMILIES}
KIND_OF_TOKENIZER = {t.name: t.kind for t in TOKENIZERS}

V = TypeVar("V")


def family(name: str) -> FamilyInfo:
    """The record of `name`; a KeyError names the families there are."""
    for info in FAMILIES:
        if info.name == name:
            return info
    raise KeyError(f"unknown family {name!r}; choose from {', '.join(FAMILY_NAMES)}")


def per_family(table: Mapping[str, V], what: str) -> dict[str, V]:
    """`table` (family name -> behaviour) after checking it covers exactly the registry, so a
    family added here cannot be silently missing from it."""
    if set(table) != set(FAMILY_NAMES):
        missing = sorted(set(FAMILY_NAMES) - set(table))
        extra = sorted(set(table) - set(FAMILY_NAMES))
        raise TypeError(f"{what}: families missing {missing}, unknown {extra}; see config/families")
    return dict(table)
