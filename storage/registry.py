"""The MLflow Model Registry: register a finished model, resolve `models:/name@alias` back to files.

Versions point at the run's logged model directory (safetensors / word2vec binary + tokenizer),
so loading a registered model never unpickles code.
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


def registered_name(experiment: str, family: str) -> str:
    """`<experiment>-<family>`: ablations and corpora never share an alias."""
    return f"{experiment}-{family}"


def register(
    name: str, run_id: str, artifact_path: str, tags: dict[str, str], alias: str = CANDIDATE
) -> RegisteredModel:
    """Register the run's logged model directory as a new version and point `alias` at it."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    return RegisteredModel(name, str(version.version), run_id, source, dict(tags))


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
        name, str(version.version), version.run_id, version.source, dict(version.tags)
    )


def download(model: RegisteredModel, destination: Path | None = None) -> Path:
    """The registered version's files on local disk (a no-op copy for local artifact stores)."""
    target = None if destination is None else str(destination)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model.source, dst_path=target))
