"""The MLflow Model Registry: register a finished model, resolve `models:/name@alias` back to files.

A version is an MLflow Model (MLflow 3 logged model, `models:/m-<id>`): its python_function
flavour embeds texts (tasks/pyfunc_model.py) and its `artifacts/model/` is the saved model
directory (safetensors / word2vec binary + tokenizer), so loading never unpickles code. Versions
registered before that point at the run's `model/` artifact directory instead; `download` finds
the weights of both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pretrainlab.config import PretrainlabError
from storage.layout import MODEL_WEIGHTS

CANDIDATE = "candidate"
CHAMPION = "champion"
WEIGHTS = "weights"  # the pyfunc artifact key of the saved model directory
WEIGHTS_DIR = MODEL_WEIGHTS  # that directory's name (MLflow keeps it), as the stages write it
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


def adapted_alias(task_name: str) -> str:
    """`adapted-<task>`: a registry alias per task (MLflow aliases allow [A-Za-z0-9_-])."""
    return "adapted-" + re.sub(r"[^A-Za-z0-9_-]", "-", task_name)


@dataclass(frozen=True)
class ModelRef:
    """A model transfer can use: the registered version it is, and where its files are here.

    Pretrained families, imported checkpoints and adapted models are all one of these; a flow
    result or a stage stamp carries it as `as_dict()` (JSON), read back with `from_dict`."""

    family: str  # the name it runs under: gpt, gpt+adapt, a checkpoint's name
    architecture: str  # the code paths it runs through: word2vec | elmo | gpt | bert
    registered_name: str
    version: str
    run_id: str
    model_key: str  # the content key of its store directory
    path: Path  # weights + tokenizer/ (models/<family>/<model_key>/model)
    tokenizer_id: str | None = None  # None for an imported checkpoint's own tokenizer
    model_id: str | None = None  # its MLflow logged model (None: registered before they existed)
    summary: Mapping[str, Any] = field(default_factory=dict, compare=False)
    cache_hit: bool = field(default=False, compare=False)
    point: str | None = None  # a pretraining point's label (a snapshot); None: the final model

    def with_hit(self, cache_hit: bool) -> ModelRef:
        return replace(self, cache_hit=cache_hit)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: a model directory's manifest, flow results, stage stamps."""
        found = asdict(self)
        found["summary"] = dict(self.summary)
        path = found.pop("path")
        return {**found, "model_dir": str(path), "output": str(path)}

    def manifest(self) -> dict[str, Any]:
        """What its store directory's `_manifest.json` records (whether it was reused is not)."""
        return {k: v for k, v in self.as_dict().items() if k != "cache_hit"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> ModelRef:
        """From `as_dict()` or a manifest (older ones carry no architecture/tokenizer_id);
        `path` overrides the recorded one (a manifest written by another machine)."""
        return cls(
            family=data["family"],
            architecture=data.get("architecture") or data["family"],
            registered_name=data["registered_name"],
            version=str(data["version"]),
            run_id=data["run_id"],
            model_key=data["model_key"],
            path=Path(path if path is not None else data["model_dir"]),
            tokenizer_id=data.get("tokenizer_id"),
            model_id=data.get("model_id"),
            summary=dict(data.get("summary") or {}),
            cache_hit=bool(data.get("cache_hit", False)),
            point=data.get("point"),
        )


def register(
    name: str,
    run_id: str,
    artifact_path: str,
    tags: dict[str, str],
    alias: str | None = CANDIDATE,
    model_id: str | None = None,
    description: str | None = None,
) -> RegisteredModel:
    """Register a new version and point `alias` at it (None: no alias, e.g. a pretraining
    point): the logged model `model_id` when given, else the run's directory `artifact_path`."""
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
    if alias is not None:
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
