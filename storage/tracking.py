"""MLflow helpers for the Prefect tasks: where runs go, what they log, and what they never log.

MLflow 3.17 defaults to `sqlite:///mlflow.db` in the cwd and, without a server, puts artifacts
under `./mlruns` of whatever cwd created the experiment. So the URI is always set explicitly
(`configure`) and experiments are created with an explicit artifact location under the store.
Logged params and tags pass through `redact`: a spec may hold a database URL with a password or
an API key, and MLflow shows params to everyone who can open the UI.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from pretrainlab.config import PretrainlabError
from storage.mlflow_runs import sqlite_path

MASK = "***"
TRUNCATED = "...[truncated]"

# A key is secret when one of its word segments (split on non-alphanumerics and camelCase) is one
# of these: `aws_secret_access_key`, `apiKey`, `db_password` match; `tokens`, `tokenizer`,
# `max_sentence_tokens`, `vocab_size` do not ("tokens" are counts, not credentials).
SECRET_SEGMENTS = frozenset(
    {
        "password", "passwords", "passwd", "pwd", "passphrase",
        "secret", "secrets",
        "token", "apitoken", "authtoken", "accesstoken",
        "key", "keys", "apikey", "accesskey", "secretkey", "privatekey",
        "credential", "credentials", "creds",
        "authorization",
    }
)  # fmt: skip
# "key" also names lookup keys: `model_key`, `cache_key` (content hashes of this project) are not
# credentials. Every other `*_key` is masked: over-redacting a param costs less than leaking one.
LOOKUP_KEY_WORDS = frozenset({"model", "cache", "training", "sort", "partition", "join", "group"})
_SEGMENT = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# scheme://user:password@ — the password may (illegally, but people do) hold "@" or "/";
# "host:5000/path@x" is a port, not a password.
_URL_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*)"
    r":(?!\d+(?:[/?#]|$))(?:[^/?#\s]*@|[^@\s]*@)"
)
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
_BAD_PARAM_CHARS = re.compile(r"[^\w.\- /]")  # what MLflow accepts in names, minus ":"

_configured_artifact_root: Path | None = None


class TrackingUnavailable(PretrainlabError, RuntimeError):
    """The tracking backend cannot be used; the message names the URI and what to do."""


# ---------------------------------------------------------------- configuration and experiments


def configure(tracking_uri: str, artifact_root: Path) -> None:
    """Point MLflow at `tracking_uri` and remember where new experiments keep artifacts."""
    global _configured_artifact_root
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    artifact_root = Path(artifact_root).expanduser().resolve()
    artifact_root.mkdir(parents=True, exist_ok=True)
    _configured_artifact_root = artifact_root
    mlflow.set_tracking_uri(tracking_uri)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def experiment_dir_name(name: str) -> str:
    """A directory name for an experiment: `transfer/polarity` -> `transfer_polarity`."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return cleaned or "experiment"


def ensure_experiment(name: str, artifact_root: Path) -> str:
    """The id of experiment `name`, created with artifacts under `artifact_root` if missing.

    Safe when two processes race: the loser of `create_experiment` reads the winner's id.
    A deleted experiment of that name is restored (its name cannot be reused otherwise).
    With an http(s) tracking server the server chooses the artifact location (it proxies them).
    """
    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    location = None
    if not _is_http(mlflow.get_tracking_uri()):
        location = (Path(artifact_root).expanduser().resolve() / experiment_dir_name(name)).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        winner = client.get_experiment_by_name(name)
        if winner is None:
            raise
        return winner.experiment_id


# ----------------------------------------------------------------------------------- redaction


def is_secret_key(key: str) -> bool:
    """True when a key name says its value is a credential (see SECRET_SEGMENTS)."""
    segments = [segment.lower() for segment in _SEGMENT.findall(str(key))]
    for index, segment in enumerate(segments):
        if segment not in SECRET_SEGMENTS:
            continue
        lookup = (
            segment in ("key", "keys") and index > 0 and segments[index - 1] in LOOKUP_KEY_WORDS
        )
        if not lookup:
            return True
    return False


def _redact_text(text: str) -> str:
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)

    def query_value(match: re.Match[str]) -> str:
        if not is_secret_key(match["name"]):
            return match[0]
        return f"{match['lead']}{match['name']}={MASK}"

    return _QUERY_PARAM.sub(query_value, text) if "://" in text else text


def redact(value: Any) -> Any:
    """A copy of `value` with credentials masked: secret-named keys and passwords in URLs."""
    if isinstance(value, Mapping):
        return {
            key: (MASK if is_secret_key(key) and item not in (None, "") else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Path):
        return _redact_text(str(value))
    return value


# --------------------------------------------------------------------------------------- params


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def _flat_items(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            name = _BAD_PARAM_CHARS.sub("_", str(key))
            yield from _flat_items(item, f"{prefix}.{name}" if prefix else name)
    elif isinstance(value, list | tuple) and value:
        for index, item in enumerate(value):
            yield from _flat_items(item, f"{prefix}.{index}" if prefix else str(index))
    else:
        yield prefix, value


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: `corpus.sources.0.path` -> value, redacted, truncated.

    Empty dicts/lists stay as one param (`{}`/`[]`) so the logged spec shows every field.
    """
    flat: dict[str, str] = {}
    for key, value in _flat_items(redact(d), prefix):
        if isinstance(value, Mapping | list | tuple):
            text = "{}" if isinstance(value, Mapping) else "[]"
        else:
            text = str(value)
        flat[key] = _truncate(text, MAX_PARAM_VAL_LENGTH)
    return flat


def log_spec(spec_dict: Mapping[str, Any], artifact_file: str = "spec.yaml") -> dict[str, str]:
    """Log a resolved spec on the active run: flattened params plus the whole (redacted) file."""
    params = flatten_params(spec_dict)
    mlflow.log_params(params)
    mlflow.log_dict(redact(spec_dict), artifact_file)
    return params


def log_metrics_safe(
    metrics: Mapping[str, Any],
    step: int | None = None,
    run_id: str | None = None,
    model_id: str | None = None,
) -> dict[str, float]:
    """Log only the finite numbers of `metrics` on the active run (or on `run_id`, from a process
    that must not reopen the run, e.g. a torchrun rank), and against the logged model `model_id`
    when given; returns what was logged.

    NaN/inf (a diverged loss) and non-numbers (None, strings, flags) are skipped instead of
    failing the stage; numpy and 0-d torch scalars are accepted.
    """
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        number = _as_float(value)
        if number is not None and math.isfinite(number):
            clean[_BAD_PARAM_CHARS.sub("_", str(key))] = number
    if clean:
        mlflow.log_metrics(clean, step=step, run_id=run_id, model_id=model_id)
    return clean


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        scalar = item()
        return None if isinstance(scalar, bool) else _as_float(scalar)
    return None


# ----------------------------------------------------------------------------------------- runs


def _clean_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {
        str(key): _truncate(str(value), MAX_TAG_VAL_LENGTH)
        for key, value in redact(dict(tags or {})).items()
        if value is not None
    }


@contextmanager
def start_stage_run(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    artifact_root: Path | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open an MLflow run for one stage and end it FINISHED, FAILED or KILLED.

    `run_id` resumes that run (e.g. after a killed pretraining) instead of creating one; tags are
    then added to it. An exception marks the run FAILED; a cancel (any BaseException that is not
    an Exception: Ctrl-C, SIGTERM turned into SystemExit or TerminationSignal) marks it KILLED,
    so it can be resumed. Either is re-raised.
    """
    clean_tags = _clean_tags(tags)
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id)
        if clean_tags:
            mlflow.set_tags(clean_tags)
    else:
        root = artifact_root or _configured_artifact_root
        if root is None:
            raise TrackingUnavailable(
                "no artifact root: call storage.tracking.configure(tracking_uri, artifact_root) "
                "before start_stage_run, or pass artifact_root="
            )
        experiment_id = ensure_experiment(experiment, root)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=clean_tags)
    try:
        yield run
    except Exception:
        mlflow.end_run(status="FAILED")
        raise
    except BaseException:  # Ctrl-C, SystemExit, a cancelled task, Prefect's TerminationSignal
        mlflow.end_run(status="KILLED")
        raise
    mlflow.end_run(status="FINISHED")


# -------------------------------------------------------------------------------- reachability


def check_tracking_reachable(uri: str, timeout: float = 5) -> None:
    """Fail fast, before any heavy work, when the tracking backend cannot be used.

    http(s): GET <uri>/health. sqlite: the database's directory must be writable (or creatable).
    file: the file store is refused by MLflow 3 unless MLFLOW_ALLOW_FILE_STORE=true.
    Other schemes (postgresql://, databricks) are left to MLflow's own errors.
    """
    if _is_http(uri):
        _check_http(uri, timeout)
        return
    db_path = sqlite_path(uri)
    if db_path is not None:
        _check_writable(uri, db_path)
        return
    if uri.startswith("file:") or "://" not in uri:
        allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")
        if not allowed:
            raise TrackingUnavailable(
                f"tracking URI {redact(uri)!r} is a file store, which MLflow 3 refuses; use "
                "sqlite:///<path>/mlflow.db (or unset MLFLOW_TRACKING_URI for <store>/mlflow.db)"
            )
        path = urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri
        _check_writable(uri, Path(path) / "meta.yaml")


def _check_http(uri: str, timeout: float) -> None:
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # credentials are MLflow's business, not /health's
    health = urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", "")
    )
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            problem = None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        # 401/403: a server is there behind authentication; MLflow's client handles the login.
        problem = None if error.code in (401, 403) else f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    if problem is None:
        return
    raise TrackingUnavailable(
        f"MLflow tracking server {redact(uri)} is not reachable "
        f"({problem} from {redact(health)}). Start it with "
        "`make up`, or unset MLFLOW_TRACKING_URI (and tracking.uri in the spec) to track in "
        "<store>/mlflow.db without a server."
    )


def _check_writable(uri: str, target: Path) -> None:
    target = target.expanduser().absolute()
    if target.exists() and not os.access(target, os.W_OK):
        raise TrackingUnavailable(f"tracking URI {redact(uri)!r}: {target} is not writable")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise TrackingUnavailable(
            f"tracking URI {redact(uri)!r}: cannot create {target.parent} ({ancestor} is not a "
            "writable directory); choose another tracking.uri or store"
        )

