"""Registered versions are real MLflow Models: pyfunc loading, plain transformers loading, model
cards, REST serving. One tiny pretraining of every family, real MLflow on a temp SQLite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from transformers import AutoModel, AutoModelForCausalLM

from flows.pipeline import pipeline
from pipelines.models import saved
from pipelines.transfer.embed import TextEmbedder
from pretrainlab.config import Spec, spec_from_dict
from storage import catalog, registry
from tasks import mlflow_model
from tests.flows.tiny_specs import tiny_spec_dict

pytestmark = pytest.mark.slow
TEXTS = ["Pretraining helps a little.", "The government said on Tuesday it would act."]
# Embedding width per family in tiny_spec_dict: word2vec vector_size, ELMo 2 x embedding_dim.
DIMS = {"word2vec": 16, "elmo": 32, "gpt": 32, "bert": 32}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Spec:
    data = tiny_spec_dict(
        tmp_path_factory.mktemp("serve"), "servetest", [{"dataset": "lee-news", "limit": 120}]
    )
    spec = spec_from_dict(data)
    pipeline(spec, until="pretrain")
    return spec


@pytest.fixture
def tracked(lab: Spec) -> Spec:
    mlflow.set_tracking_uri(lab.tracking_uri())
    return lab


def _uri(family: str) -> str:
    return f"models:/servetest-{family}@candidate"


def test_every_family_embeds_texts_through_pyfunc(tracked: Spec) -> None:
    for family, dim in DIMS.items():
        model = mlflow.pyfunc.load_model(_uri(family))
        pooled = np.asarray(model.predict(TEXTS))
        assert pooled.shape == (2, dim), family
        assert np.isfinite(pooled).all() and not np.allclose(pooled[0], pooled[1])
        # The same features transfer reads, from the weights the registry hands out.
        direct = TextEmbedder.load(family, registry.download(registry.resolve(_uri(family))))
        np.testing.assert_allclose(pooled, direct.embed(TEXTS), rtol=1e-5, atol=1e-6)
        tokens = model.predict(TEXTS, params={"output": "tokens", "layer": 0})
        assert len(tokens) == 2 and all(np.asarray(t).shape[1] == dim for t in tokens)
        assert len(tokens[1]) >= 5  # one vector per token of the text
    with pytest.raises(Exception, match="layers 0"):
        mlflow.pyfunc.load_model(_uri("gpt")).predict(TEXTS, params={"layer": 7})


def test_weights_are_logged_once_inside_the_model(tracked: Spec) -> None:
    client = MlflowClient()
    for family in DIMS:
        version = registry.resolve(_uri(family))
        assert version.source == f"models:/{version.model_id}"
        run_artifacts = {a.path for a in client.list_artifacts(version.run_id)}
        assert "model" not in run_artifacts  # no second copy in the run
        weights = registry.download(version)
        assert weights.as_posix().endswith(registry.WEIGHTS_PATH)
        assert (weights / "tokenizer").is_dir()
        saved.load_pretrained(family, weights)  # the loader of record still reads them


def test_gpt_and_bert_weights_load_with_plain_transformers(tracked: Spec) -> None:
    gpt_dir = mlflow.artifacts.download_artifacts(f"{_uri('gpt')}/{registry.WEIGHTS_PATH}")
    gpt = AutoModelForCausalLM.from_pretrained(gpt_dir)
    assert gpt.config.n_embd == DIMS["gpt"]
    bert_dir = mlflow.artifacts.download_artifacts(f"{_uri('bert')}/{registry.WEIGHTS_PATH}")
    bert = AutoModel.from_pretrained(bert_dir)
    assert bert.config.hidden_size == DIMS["bert"]


def test_the_card_is_the_description_and_matches_the_catalog(tracked: Spec) -> None:
    client = MlflowClient()
    rows = catalog.query(
        Path(tracked.store),
        "select run_id, key, value from metrics_latest",
        tracking_uri=tracked.tracking_uri(),
    ).to_pylist()
    latest = {(r["run_id"], r["key"]): r["value"] for r in rows}
    for family in DIMS:
        version = registry.resolve(_uri(family))
        card = client.get_model_version(version.name, version.version).description
        assert card.startswith(f"# servetest-{family}")
        assert version.tags["corpus_id"] in card and version.tags["tokenizer_id"] in card
        assert "documents" in card  # the corpus size
        steps = latest.get((version.run_id, "steps")) or latest[(version.run_id, "epochs")]
        assert f"{int(steps):,} " in card
        if family != "word2vec":
            for key in ("valid_loss", "unigram_entropy"):
                assert f"{latest[(version.run_id, key)]:.4f}" in card, key
        readme = mlflow.artifacts.download_artifacts(f"{_uri(family)}/README.md")
        assert Path(readme).read_text(encoding="utf-8") == card
        logged = client.get_logged_model(version.model_id)  # the Models page's metrics
        assert {"tokens_seen", "flops"} <= {m.key for m in logged.metrics}
        model_dir = Path(tracked.store) / "models" / family
        assert not list(model_dir.rglob("README.md"))  # the store's directory is untouched


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_models_serve_answers_a_rest_request(tracked: Spec) -> None:
    port = mlflow_model.free_port()
    command = [sys.executable, "-m", "pretrainlab.cli", "models", "serve",
               "servetest-bert@candidate", "--port", str(port), "--store", tracked.store]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracked.tracking_uri(), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, "the server exited"
            try:
                answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": TEXTS})
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "no answer within 240 s"
                time.sleep(1)
        assert np.asarray(answer["predictions"]).shape == (2, DIMS["bert"])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the CLI, mlflow and its uvicorn worker
        server.wait(timeout=60)
