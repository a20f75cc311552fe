"""One way to load a saved model of any family, with the tokenizer it was trained with.

Every saved model is a directory: the family's weights in its standard format plus
`tokenizer/` (see `tokenizer_training.ship_tokenizer`). Pretraining, adaptation, the Hugging
Face importer and transfer all load through here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipelines.models.bert as bert
import pipelines.models.elmo as elmo
import pipelines.models.gpt as gpt
import pipelines.models.word2vec as word2vec
from pipelines.data.tokenizer_training import TOKENIZER_SUBDIR, load_tokenizer
from pretrainlab.config import FAMILY_NAMES, PretrainlabError, per_family


def _with_tokenizer(load: Callable[[Path], Any]) -> Callable[[Path], tuple[Any, Any]]:
    """word2vec and ELMo save weights only; their tokenizer is the shipped `tokenizer/`."""
    return lambda directory: (load(directory), load_tokenizer(directory / TOKENIZER_SUBDIR))


# GPT and BERT are Hugging Face models: their loaders return the model and its tokenizer.
LOADERS = per_family(
    {
        "word2vec": _with_tokenizer(word2vec.load_vectors),
        "elmo": _with_tokenizer(elmo.load_elmo),
        "gpt": gpt.load_gpt,
        "bert": bert.load_bert,
    },
    "saved.LOADERS",
)


def load_pretrained(family: str, directory: str | Path) -> tuple[Any, Any]:
    """A saved model of `family` and the tokenizer it was trained with, ready to use."""
    if family not in LOADERS:
        raise PretrainlabError(f"unknown family {family!r}; choose from {', '.join(FAMILY_NAMES)}")
    return LOADERS[family](Path(directory))
