"""One way to load a saved model of any family, with the tokenizer it was trained with.

Every saved model is a directory: the family's weights in its standard format plus
`tokenizer/` (see `tokenizer_training.ship_tokenizer`). Pretraining, adaptation, the Hugging
Face importer and transfer all load through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pipelines.models.bert as bert
import pipelines.models.elmo as elmo
import pipelines.models.gpt as gpt
import pipelines.models.word2vec as word2vec
from pipelines.data.tokenizer_training import TOKENIZER_SUBDIR, load_tokenizer
from pretrainlab.config import PretrainlabError


def load_pretrained(family: str, directory: str | Path) -> tuple[Any, Any]:
    """A saved model of `family` and the tokenizer it was trained with, ready to use."""
    directory = Path(directory)
    tokenizer_dir = directory / TOKENIZER_SUBDIR
    if family == "gpt":
        return gpt.load_gpt(directory)
    if family == "bert":
        return bert.load_bert(directory)
    if family == "elmo":
        return elmo.load_elmo(directory), load_tokenizer(tokenizer_dir)
    if family == "word2vec":
        return word2vec.load_vectors(directory), load_tokenizer(tokenizer_dir)
    raise PretrainlabError(
        f"unknown family {family!r}; choose from word2vec, elmo, gpt, bert"
    )
