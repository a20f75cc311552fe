"""The python_function model of every registered version: texts in, embeddings out.

MLflow "models from code": `tasks/mlflow_model.py` logs THIS FILE (not a pickled object) with
each model; loading the model runs it, so nothing is unpickled and the code that serves a version
is readable next to its weights. It needs pretrainlab importable (installed, or on PYTHONPATH).

Input: a list of texts (or a one-column DataFrame, as the REST server passes it).
Params (all optional): output "pooled" (default: one vector per text) or "tokens" (per text a
list of token vectors); layer (-1 = top, 0 = embeddings); pooling "family" (the reading transfer
uses: BERT [CLS], GPT last token, ELMo/word2vec mean) or "mean". See pipelines/transfer/embed.py.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipelines.transfer.embed import DEFAULTS, TextEmbedder
from storage.registry import WEIGHTS


def as_texts(model_input: Any) -> list[str]:
    """The texts of any input MLflow may hand over: list, str, Series, array, DataFrame."""
    if isinstance(model_input, pd.DataFrame):
        return [str(t) for t in model_input.iloc[:, 0]]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict) and len(model_input) == 1:
        return as_texts(next(iter(model_input.values())))
    return [str(t) for t in np.asarray(model_input, dtype=object).ravel()]


class EmbeddingModel(PythonModel):
    """Loads the saved model once per process; `predict` embeds a batch of texts."""

    def load_context(self, context):
        family = context.model_config["family"]
        self.embedder = TextEmbedder.load(family, context.artifacts[WEIGHTS])

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them
        options = {**DEFAULTS, **(params or {})}
        embedded = self.embedder.embed(as_texts(model_input), **options)
        if isinstance(embedded, list):  # tokens: ragged, so plain lists (JSON over REST)
            return [rows.tolist() for rows in embedded]
        return embedded


mlflow.models.set_model(EmbeddingModel())
