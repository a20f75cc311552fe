"""The MLflow Model Registry: register a finished model, resolve `models:/name@alias` back to files.

A version is an MLflow Model (MLflow 3 logged model, `models:/m-<id>`): its python_function
flavour embeds texts (tasks/pyfunc_model.py) and its `artifacts/model/` is the saved model
directory (safetensors / word2vec binary + tokenizer), so loading never unpickles code. Versions
registered before that point at the run's `model/` artifact directory instead; `download` finds
the weights of both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pretrainlab.config import PretrainlabError

CANDIDATE = "candidate"
CHAMPION = "champion"
WEIGHTS = "weights"  # the pyfunc artifact key of the saved model directory
WEIGHTS_DIR = "model"  # that directory's name (MLflow keeps it), as the stages write it
WEIGHTS_PATH = f"artifacts/{WEIGHTS_DIR}"  # ... and its place inside the logged model
_LOGGED = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)$")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class RegistryError(PretrainlabError, LookupError):
    """A registered model that cannot be found; the message lists what exists."""


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    model_id: str | None = None  # the MLflow logged model (None: registered before they existed)

    def weights_uri(self) -> str:
        """Where the saved model directory lives: inside the logged model, or the old source.
        (`models:/m-<id>/<path>` would ignore the path: go through the artifact location.)"""
        if not self.model_id:
            return self.source
        location = MlflowClient().get_logged_model(self.model_id).artifact_location
        return f"{location}/{WEIGHTS_PATH}"


def registered_name(experiment: str, family: str) -> str:
    """`<experiment>-<family>`: ablations and corpora never share an alias."""
    return f"{experiment}-{family}"


def register(
    name: str,
    run_id: str,
    artifact_path: str,
    tags: dict[str, str],
    alias: str = CANDIDATE,
    model_id: str | None = None,
    description: str | None = None,
) -> RegisteredModel:
    """Register a new version and point `alias` at it: the logged model `model_id` when given,
    else the run's artifact directory `artifact_path`."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    if model_id is not None:
        source = f"models:/{model_id}"
    else:
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description, model_id=model_id
    )
    client.set_registered_model_alias(name, alias, version.version)
    return RegisteredModel(name, str(version.version), run_id, source, dict(tags), model_id)


def _known(client: MlflowClient) -> str:
    names = [model.name for model in client.search_registered_models()]
    return ", ".join(sorted(names)) or "none yet (run the pretrain stage)"


def resolve(uri: str) -> RegisteredModel:
    """`models:/name@alias` or `models:/name/3` -> the registered version."""
    match = _URI.match(uri)
    if not match:
        raise RegistryError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    client = MlflowClient()
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
    except MlflowException:
        raise RegistryError(
            f"{uri}: no such registered model version; registered models: {_known(client)}"
        ) from None
    return RegisteredModel(
        name,
        str(version.version),
        version.run_id,
        version.source,
        dict(version.tags),
        _logged_model_id(version.source),
    )


def _logged_model_id(source: str) -> str | None:
    """`m-<id>` of a `models:/m-<id>` source (the SQLite store does not return model_id)."""
    match = _LOGGED.match(source or "")
    return match["id"] if match else None


def download(model: RegisteredModel, destination: Path | None = None) -> Path:
    """The version's saved model directory on local disk (what `load_pretrained` reads), for
    versions of either kind; a no-op copy for local artifact stores."""
    target = None if destination is None else str(destination)
    uri = model.weights_uri()
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=target))
