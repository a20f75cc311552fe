"""Every registered version is an MLflow Model: log it, card it, register it, serve it.

`publish` runs inside a stage's MLflow run once the saved model directory is complete:
- logs an MLflow 3 logged model whose python_function flavour is `tasks/pyfunc_model.py`
  (models from code: texts in, embeddings out) and whose only artifact is the saved model
  directory (`artifacts/model/`): the weights are logged once, there, and stay plain
  `save_pretrained` / word2vec files;
- logs the stage's metrics against that model (`model_id`), so MLflow's Models page shows them;
- writes the model card as the version's description and as README.md inside the logged model
  (never inside the store's model directory, whose files key the feature cache);
- registers the version and points the alias at it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipelines.transfer.embed import DEFAULTS, TextEmbedder
from pretrainlab.config import PretrainlabError, Spec
from storage import registry, tracking, versions
from storage.atomic import read_manifest
from storage.layout import Layout

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
EXAMPLE = ["Pretraining helps.", "The model reads two sentences."]
# What the served code imports; versions as pretrainlab's own metadata pins them.
RUNTIME = ("mlflow", "torch", "transformers", "tokenizers", "gensim", "numpy", "pandas")
LOOPBACK = "127.0.0.1"


def pip_requirements() -> list[str]:
    """pretrainlab and the packages the pyfunc code runs on (no `+cpu` local versions)."""
    try:
        version = importlib.metadata.version("pretrainlab")
        declared = importlib.metadata.requires("pretrainlab") or []
    except importlib.metadata.PackageNotFoundError:
        version, declared = None, []
    pins = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower(): r.split(";")[0] for r in declared}
    found = [pins.get(name, name) for name in RUNTIME]
    return [f"pretrainlab=={version}" if version else "pretrainlab", *found]


# ----------------------------------------------------------------------------- the model card


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if abs(value) >= 1e9:
        return f"{value:.3e}"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.{digits}f}"


def _corpus_size(store: str | Path, corpus_id: str | None) -> str:
    manifest = read_manifest(Layout.at(store).corpus(corpus_id)) if corpus_id else None
    stats = (manifest or {}).get("stats", {})
    docs, size = stats.get("docs_written"), stats.get("bytes_written")
    parts = [f"{docs:,} documents" if docs else "", f"{size / 1e6:,.1f} MB" if size else ""]
    return ", ".join(p for p in parts if p) or "size unknown"


def _training_line(metrics: Mapping[str, Any]) -> str:
    parts = [
        f"{_number(metrics[key])} {label}"
        for key, label in (("steps", "steps"), ("epochs", "epochs"),
                           ("tokens_seen", "tokens seen"), ("flops", "FLOPs"))
        if metrics.get(key) is not None
    ]
    if metrics.get("wall_s") is not None:
        parts.append(f"{metrics['wall_s']:,.0f} s")
    return ", ".join(parts) or "not trained here (imported)"


def _loss_line(metrics: Mapping[str, Any]) -> str | None:
    loss, entropy = metrics.get("valid_loss"), metrics.get("unigram_entropy")
    if loss is None:
        return None
    line = f"{_number(loss)} nats/token"
    if entropy is not None:
        gap = entropy - loss
        verdict = "learned beyond word frequencies" if gap > 0 else "no better than frequencies"
        line += f" vs unigram entropy {_number(entropy)} (gap {_number(gap)}: {verdict})"
    return line


def _depth(n_blocks: int) -> str:
    return f"{n_blocks} layers above the embeddings" if n_blocks else "one embedding table"


def model_card(
    experiment: str, store: str | Path, name: str, architecture: str, embedder: TextEmbedder,
    tags: Mapping[str, str], metrics: Mapping[str, Any], alias: str | None = registry.CANDIDATE,
) -> str:
    """The version's description: what it is, what it was trained on, how well, how to use it.
    A pretraining point has no alias: its card loads it by version number."""
    uri = f"{name}@{alias}" if alias else f"{name}/<this version>"
    n_params = metrics.get("n_params") or sum(p.numel() for p in embedder.encoder.parameters())
    rows = [
        ("family", tags.get("family", architecture)),
        ("architecture", f"{architecture}: {_depth(embedder.encoder.n_blocks)}, width "
                         f"{embedder.dim}, {_number(n_params)} parameters"),
        ("stage", tags.get("stage", "")),
        ("corpus", f"`{tags['corpus_id']}` ({_corpus_size(store, tags['corpus_id'])})"
         if tags.get("corpus_id") else ""),
        ("tokenizer", f"`{tags['tokenizer_id']}`" if tags.get("tokenizer_id") else ""),
        ("parent", f"{name} v{tags['parent_version']} adapted on {tags.get('adapted_on')}"
         if tags.get("parent_version") else ""),
        ("imported from", tags.get("source_path", "")),
        ("pretraining point", f"{tags['point']} of the steps: step {tags.get('pretrain_step')}, "
         f"{tags.get('tokens_seen')} tokens ({tags.get('schedule')})" if tags.get("point")
         else ""),
        ("training", _training_line(metrics)),
        ("valid loss", _loss_line(metrics) or ""),
        ("headline", f"{tags['headline_metric']} = {_number(metrics.get('headline_value'))}"
         if tags.get("headline_metric") else ""),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows if value)
    return f"""# {name}

A {architecture} text encoder trained by pretrainlab (experiment `{experiment}`).

| | |
|---|---|
{table}

Downstream scores: `pretrainlab models compare {name}` once the transfer stage has run.

## Use it

```python
import mlflow
model = mlflow.pyfunc.load_model("models:/{uri}")
model.predict({EXAMPLE!r})  # ({len(EXAMPLE)}, {embedder.dim}) embeddings
model.predict(["a sentence"], params={{"output": "tokens", "layer": 0}})  # per token
```

The weights are `{registry.WEIGHTS_PATH}/` of this model (plain files: `from_pretrained`
loads GPT and BERT). Serve it: `pretrainlab models serve {uri}`.
"""


# ----------------------------------------------------------------------------- log and register


def publish(
    spec: Spec, name: str, architecture: str, model_dir: Path, tags: Mapping[str, str],
    metrics: Mapping[str, Any], alias: str | None = registry.CANDIDATE,
) -> registry.RegisteredModel:
    """Log `model_dir` as an MLflow Model of the active run, log `metrics` against it (and the
    run), and register it as a new version of `name` described by its model card."""
    where = (spec.experiment, spec.store)
    return _publish(*where, name, architecture, model_dir, tags, metrics, alias)


def _publish(
    experiment: str, store: str | Path, name: str, architecture: str, model_dir: Path,
    tags: Mapping[str, str], metrics: Mapping[str, Any], alias: str | None,
) -> registry.RegisteredModel:
    run = mlflow.active_run()
    if run is None or model_dir.name != registry.WEIGHTS_DIR:
        raise PretrainlabError(
            f"{name}: publish needs the stage's active MLflow run and a saved model directory "
            f"named {registry.WEIGHTS_DIR!r} (got {model_dir})"
        )
    embedder = TextEmbedder.load(architecture, model_dir)  # also proves the directory loads
    card = model_card(experiment, store, name, architecture, embedder, tags, metrics, alias)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PYFUNC_CODE),
        artifacts={registry.WEIGHTS: str(model_dir)},
        model_config={"family": architecture},
        signature=infer_signature(EXAMPLE, embedder.embed(EXAMPLE), params=DEFAULTS),
        input_example=EXAMPLE,
        pip_requirements=pip_requirements(),
        tags={k: v for k, v in tags.items() if k in ("family", "stage", "model_key")},
    )
    with tempfile.TemporaryDirectory() as tmp:
        readme = Path(tmp) / "README.md"
        readme.write_text(card, encoding="utf-8")
        MlflowClient().log_model_artifact(info.model_id, str(readme))
    tracking.log_metrics_safe(metrics, model_id=info.model_id)
    return registry.register(
        name, run.info.run_id, "", dict(tags), alias, model_id=info.model_id, description=card
    )


def republish(ref: str, store: str | Path) -> registry.RegisteredModel:
    """A version registered before versions were MLflow Models (its source is the run's `model/`
    directory) re-registered as one: a new version from the same files, with the run's metrics
    and tags, logged in its own (reopened) run; its aliases move to the new version."""
    old = registry.resolve(models_uri(ref))
    if old.model_id:
        return old
    client = MlflowClient()
    run = client.get_run(old.run_id)
    experiment = client.get_experiment(run.info.experiment_id).name
    aliases = client.get_model_version(old.name, old.version).aliases or [registry.CANDIDATE]
    architecture = old.tags.get("architecture") or old.tags["family"]
    with mlflow.start_run(run_id=old.run_id):
        new = _publish(experiment, store, old.name, architecture, registry.download(old),
                       old.tags, run.data.metrics, aliases[0])
    for alias in aliases[1:]:
        client.set_registered_model_alias(old.name, alias, new.version)
    return new


# ----------------------------------------------------------------------------- serve


def models_uri(ref: str) -> str:
    return ref if ref.startswith("models:/") else f"models:/{ref}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def serve_command(ref: str, port: int) -> list[str]:
    """`mlflow models serve` for `NAME@alias` (or a models:/ URI) on the loopback interface,
    in this environment (`--env-manager local`: nothing is installed, it works offline)."""
    uri = models_uri(ref)
    if not registry.resolve(uri).model_id:  # (resolve names the registered models when unknown)
        raise PretrainlabError(
            f"{ref} was registered before versions were MLflow Models (its source is a run "
            f"directory): re-register it once with `python -m tasks.mlflow_model republish {ref} "
            "--store STORE`, then serve it"
        )
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
            "--host", LOOPBACK, "--port", str(port), "--workers", "1"]


def serve(ref: str, port: int, tracking_uri: str) -> subprocess.Popen:
    """Start the REST server (`POST /invocations`); the caller waits on or stops the process."""
    mlflow.set_tracking_uri(tracking_uri)
    command = serve_command(ref, port)
    bin_dir = str(Path(sys.executable).parent)  # mlflow execs `uvicorn` from PATH: ours first
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    return subprocess.Popen(command, env=env)


def main(argv: list[str]) -> None:
    """`python -m tasks.mlflow_model republish NAME@alias [--store STORE]` (see `republish`)."""
    if len(argv) not in (2, 4) or argv[0] != "republish" or argv[2:3] not in ([], ["--store"]):
        raise SystemExit("usage: python -m tasks.mlflow_model republish NAME@alias [--store DIR]")
    store = Path(argv[3] if len(argv) == 4 else ".pretrainlab")
    mlflow.set_tracking_uri(versions.tracking_for(store, None))  # $MLFLOW_TRACKING_URI or store's
    new = republish(argv[1], store)
    print(f"{new.name} v{new.version}: an MLflow Model ({new.source})")


if __name__ == "__main__":
    main(sys.argv[1:])
