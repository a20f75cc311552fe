"""The store's remote mirror, and reaching object storage at all, through pyarrow.fs.

Every stage keeps writing to the local store: content-addressed directories renamed into place
atomically, which object stores cannot do. The spec's `storage.remote` (s3://bucket/prefix,
gs://..., file:///shared/lab) names a mirror of that store:

  * after an output is complete locally it is pushed: every file, then `_manifest.json` last
    (S3 has no rename; a reader trusts a remote directory only once its manifest exists, so a
    killed upload is never used and the next push simply rewrites it);
  * before a stage looks for its output, a complete remote output missing locally is pulled
    into an atomic local directory, so a second machine reuses the first one's work.

`Mirror.sync(path)` does whichever applies. Single files (result rows, the tokenizer index)
appear whole on every object store, so they need no manifest. Sources at URLs are read by
`storage/remote_sources.py` through the same `ObjectStore`.

S3 settings (endpoint, region, timeout) come from the spec or the standard variables
($AWS_ENDPOINT_URL, $AWS_REGION); credentials only from the standard AWS chain
($AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY, $AWS_PROFILE, instance roles) and never from the
spec, so they cannot reach logs or MLflow. Each problem (endpoint down, credentials refused,
bucket missing) raises RemoteError naming the endpoint and what to check, at the first touch,
before any heavy work.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pretrainlab.config import PretrainlabError, StorageSpec
from storage.atomic import MANIFEST, atomic_dir, atomic_path, read_manifest, write_json
from storage.layout import Layout

DEFAULT_REGION = "us-east-1"  # what S3-compatible servers (MinIO, moto, Ceph) accept by default
log = logging.getLogger(__name__)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RemoteError(PretrainlabError, OSError):
    """Object storage that cannot be used; the message names the URL, endpoint and the fix."""


def is_url(text: str | Path) -> bool:
    """True for `scheme://...` (s3://, gs://, file://); plain paths stay local paths."""
    return isinstance(text, str) and bool(_URL.match(text))


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


# --- reaching object storage ----------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStore:
    """How to reach object storage. Credentials are not here: the AWS chain supplies them."""

    endpoint: str | None = None  # S3-compatible endpoint URL; None = $AWS_ENDPOINT_URL or AWS
    region: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: StorageSpec) -> ObjectStore:
        """The spec's `storage` section (its `remote` URL is the mirror's business)."""
        return cls(settings.endpoint, settings.region, settings.timeout_s)

    @property
    def s3_endpoint(self) -> str | None:
        return (
            self.endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    def where(self, url: str) -> str:
        """The endpoint a URL is read from, for messages."""
        if urlsplit(url).scheme != "s3":
            return url
        endpoint = self.s3_endpoint
        return f"endpoint {_without_userinfo(endpoint)}" if endpoint else "AWS S3"

    def s3(self, attempts: int = 3) -> pafs.S3FileSystem:
        options: dict[str, Any] = {
            "connect_timeout": self.timeout_s,
            "request_timeout": self.timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        }
        endpoint = self.s3_endpoint
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options["endpoint_override"] = parts.netloc
            options["scheme"] = parts.scheme
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region or endpoint:
            options["region"] = region or DEFAULT_REGION
        return pafs.S3FileSystem(**options)

    def filesystem(self, url: str, attempts: int = 3) -> tuple[pafs.FileSystem, str]:
        """The filesystem and the path inside it of a URL (or a local path)."""
        if not is_url(url):
            return pafs.LocalFileSystem(), str(Path(url).expanduser().resolve())
        parts = urlsplit(url)
        if parts.scheme == "s3":
            if not parts.netloc:
                raise RemoteError(f"{url}: no bucket in the URL; write s3://BUCKET/prefix")
            return self.s3(attempts), (parts.netloc + parts.path).rstrip("/")
        try:
            filesystem, path = pafs.FileSystem.from_uri(url)
        except (OSError, ValueError, TypeError) as error:  # pyarrow.ArrowInvalid is a ValueError
            raise RemoteError(
                f"{url}: pyarrow cannot open this URL ({error}); use s3://, gs://, hdfs://, "
                "file:// or a local path"
            ) from None
        return filesystem, path.rstrip("/")


def explain(error: BaseException, url: str, store: ObjectStore) -> RemoteError:
    """Turn a pyarrow/AWS error into what the user should check."""
    text = str(error)
    where = store.where(url)
    if re.search(r"NETWORK_CONNECTION|curlCode|connect to server|resolve host|timed? ?out", text):
        return RemoteError(
            f"{url}: cannot reach {where} ({text.splitlines()[0]}). Check that the server is "
            "running and that storage.endpoint (or $AWS_ENDPOINT_URL) names the right host "
            "and port."
        )
    if re.search(r"ACCESS_DENIED|InvalidAccessKeyId|SignatureDoesNotMatch|Forbidden|403", text):
        return RemoteError(
            f"{url}: {where} refused the credentials ({text.splitlines()[0]}). Check "
            "$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY (or $AWS_PROFILE) and that they may "
            "read and write this bucket."
        )
    if re.search(r"NO_SUCH_BUCKET|NoSuchBucket", text):
        return RemoteError(
            f"{url}: the bucket does not exist at {where}. Create it, or fix the bucket name."
        )
    return RemoteError(f"{url}: object storage error at {where}: {text}")


def file_info(
    filesystem: pafs.FileSystem, path: str, url: str, store: ObjectStore
) -> pafs.FileInfo:
    try:
        return filesystem.get_file_info(path)
    except OSError as error:
        raise explain(error, url, store) from None


def check_bucket(filesystem: pafs.FileSystem, path: str, url: str, store: ObjectStore) -> None:
    """Fail fast when the endpoint is down, the credentials are refused or the bucket is
    missing: one HEAD request on the bucket (the first component of an object store path)."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return
    bucket = path.split("/", 1)[0]
    if file_info(filesystem, bucket, url, store).type == pafs.FileType.NotFound:
        raise RemoteError(
            f"{url}: the bucket {bucket!r} does not exist at {store.where(url)}. Create it, or "
            "fix the bucket name."
        )


# --- the store's mirror ----------------------------------------------------------------------


def visible_key(key: str, base: str) -> bool:
    """No part of the key below `base` is hidden (temporaries, interrupted uploads)."""
    return not any(part.startswith(".") for part in key[len(base) :].strip("/").split("/"))


def _copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Copy one file; object stores need no parent directories (creating one would write a
    marker object), local and mounted filesystems do."""
    if isinstance(dst_fs, pafs.LocalFileSystem):
        dst_fs.create_dir(posixpath.dirname(dst), recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


@dataclass
class Mirror:
    """The local store `store` mirrored at `url`: store-relative paths map to url/relative."""

    store: Path
    url: str
    settings: ObjectStore = field(default_factory=ObjectStore)

    def __post_init__(self) -> None:
        self.store = Path(self.store).expanduser().resolve()
        self.url = self.url.rstrip("/")
        self.fs, self.root = self.settings.filesystem(self.url)
        self.local = pafs.LocalFileSystem()

    def remote_path(self, local: str | Path) -> str:
        local = Path(local).expanduser().resolve()
        try:
            relative = local.relative_to(self.store)
        except ValueError:
            raise RemoteError(f"{local} is outside the store {self.store}: not mirrored") from None
        return posixpath.join(self.root, relative.as_posix())

    def _fail(self, error: OSError) -> RemoteError:
        return explain(error, self.url, self.settings)

    def check(self) -> None:
        """Fail fast (before any stage work) and remember the mirror in <store>/remote.json."""
        check_bucket(self.fs, self.root, self.url, self.settings)
        record = {
            "url": self.url,
            "endpoint": self.settings.endpoint and _without_userinfo(self.settings.endpoint),
            "region": self.settings.region,
            "timeout_s": self.settings.timeout_s,
        }
        if _read_json(Layout(self.store).mirror_record) != record:
            write_json(Layout(self.store).mirror_record, record)

    def _type(self, path: str) -> pafs.FileType:
        return file_info(self.fs, path, self.url, self.settings).type

    def remote_complete(self, local: str | Path) -> bool:
        return self._type(posixpath.join(self.remote_path(local), MANIFEST)) == pafs.FileType.File

    def _files(self, filesystem: pafs.FileSystem, base: str) -> list[str]:
        """Relative paths of the visible files under base, the manifest last."""
        try:
            infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
        except OSError as error:
            raise self._fail(error) from None
        files = sorted(
            posixpath.relpath(i.path, base)
            for i in infos
            if i.type == pafs.FileType.File and visible_key(i.path, base)
        )
        return sorted(files, key=lambda name: name == MANIFEST)

    def push_dir(self, local: Path) -> None:
        """Upload a complete directory, `_manifest.json` last."""
        target, started = self.remote_path(local), time.perf_counter()
        names = self._files(self.local, str(local))
        try:
            for name in names:
                _copy(self.local, str(local / name), self.fs, posixpath.join(target, name))
        except OSError as error:
            raise self._fail(error) from None
        size = sum((local / name).stat().st_size for name in names)
        self._log("pushed", target, len(names), size, started)

    def _log(self, verb: str, path: str, files: int, size: int, started: float) -> None:
        seconds = time.perf_counter() - started
        log.info(
            f"{verb} {path} ({files} files, {size / 1e6:.1f} MB in {seconds:.2f}s, "
            f"{size / 1e6 / max(seconds, 1e-9):.0f} MB/s) {self.settings.where(self.url)}"
        )

    def pull_dir(self, local: Path) -> None:
        """Download a complete remote directory into an atomic local one."""
        source, started = self.remote_path(local), time.perf_counter()
        names = self._files(self.fs, source)
        try:
            with atomic_dir(local) as tmp:
                for name in names:
                    _copy(self.fs, posixpath.join(source, name), self.local, str(tmp / name))
        except OSError as error:
            raise self._fail(error) from None
        if read_manifest(local) is None:
            raise RemoteError(f"{self.url}: {source} lost its manifest while being downloaded")
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        self._log("pulled", source, len(names), size, started)

    def push_file(self, local: Path) -> None:
        try:
            _copy(self.local, str(local), self.fs, self.remote_path(local))
        except OSError as error:
            raise self._fail(error) from None

    def pull_file(self, local: Path) -> None:
        try:
            with atomic_path(local) as tmp:
                _copy(self.fs, self.remote_path(local), self.local, str(tmp))
        except OSError as error:
            raise self._fail(error) from None

    def sync(self, local: str | Path) -> str:
        """Push a complete local output the mirror lacks, or pull a complete remote output the
        store lacks. Returns "pushed", "pulled", "in sync" or "absent" (nowhere complete)."""
        local = Path(local).expanduser().resolve()
        if local.is_file():
            if self._type(self.remote_path(local)) == pafs.FileType.File:
                return "in sync"
            self.push_file(local)
            return "pushed"
        if read_manifest(local) is not None:
            if self.remote_complete(local):
                return "in sync"
            self.push_dir(local)
            return "pushed"
        if self.remote_complete(local):
            self.pull_dir(local)
            return "pulled"
        if not local.exists() and self._type(self.remote_path(local)) == pafs.FileType.File:
            self.pull_file(local)
            return "pulled"
        return "absent"

    def sync_pointer(
        self, index: Path, target_of: Callable[[str], Path], key: str = "tokenizer_id"
    ) -> str:
        """Mirror an index file that names an output (index -> tokenizer_id -> its directory).

        A missing local index is pulled, then the output it names. A local index is pushed
        after its output, and only while that output is complete here (never a dangling
        pointer); it is rewritten even when the mirror has one, since it may name a newer one."""
        if not index.is_file() and self.sync(index) == "pulled":
            named = _read_json(index)
            if isinstance(named, dict) and isinstance(named.get(key), str):
                self.sync(target_of(named[key]))
            return "pulled"
        named = _read_json(index)
        if not isinstance(named, dict) or not isinstance(named.get(key), str):
            return "absent"
        target = target_of(named[key])
        if read_manifest(target) is None:
            return "absent"
        self.sync(target)
        self.push_file(index)
        return "pushed"

    def complete_outputs(self, kind: str, depth: int = 1) -> list[str]:
        """Remote paths of the complete outputs under <root>/<kind> (`depth` levels down)."""
        base = posixpath.join(self.root, kind)
        try:
            infos = self.fs.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True)
            )
        except OSError as error:
            raise self._fail(error) from None
        return sorted(
            posixpath.dirname(i.path)
            for i in infos
            if posixpath.basename(i.path) == MANIFEST
            and posixpath.relpath(i.path, base).count("/") == depth
            and visible_key(i.path, base)
        )

    def datasets(self) -> dict[str, ds.Dataset]:
        """The mirror's complete Parquet outputs as Arrow datasets (DuckDB queries them as
        views; its httpfs extension cannot be installed offline): remote_corpus,
        remote_tokens and remote_results, the ids from the directory names."""
        found: dict[str, ds.Dataset] = {}
        layouts = {
            "remote_corpus": ("corpus", 1, ["corpus_id"]),
            "remote_tokens": ("tokens", 2, ["tokenizer_id", "encoding_id"]),
        }
        for name, (kind, depth, keys) in layouts.items():
            parts = [
                posixpath.join(output, f)
                for output in self.complete_outputs(kind, depth)
                for f in self._files(self.fs, output)
                if f.startswith("part-") and f.endswith(".parquet")
            ]
            if parts:
                found[name] = self._dataset(parts, posixpath.join(self.root, kind), keys)
        results = posixpath.join(self.root, "results")
        has_results = self._type(results) == pafs.FileType.Directory
        names = self._files(self.fs, results) if has_results else []
        rows = [posixpath.join(results, f) for f in names if f.endswith(".parquet")]
        if rows:
            found["remote_results"] = self._dataset(rows, results, [])
        return found

    def _dataset(self, files: list[str], base: str, keys: list[str]) -> ds.Dataset:
        fields = pa.schema([(key, pa.string()) for key in keys])
        partitioning = ds.partitioning(fields) if keys else None
        try:
            return ds.dataset(
                files,
                filesystem=self.fs,
                format="parquet",
                partitioning=partitioning,
                partition_base_dir=base,
            )
        except OSError as error:
            raise self._fail(error) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_MIRRORS: dict[tuple, Mirror] = {}


def open_mirror(store: str | Path, settings: StorageSpec) -> Mirror | None:
    """The mirror `settings.remote` names for this store, checked once per process (fails
    fast), or None when the store is local only."""
    if not settings.remote:
        return None
    object_store = ObjectStore.from_settings(settings)
    key = (str(Path(store).expanduser().resolve()), settings.remote, object_store)
    if key not in _MIRRORS:
        mirror = Mirror(Path(store), settings.remote, object_store)
        mirror.check()
        _MIRRORS[key] = mirror
    return _MIRRORS[key]


def store_mirror(store: str | Path) -> Mirror | None:
    """The mirror recorded in <store>/remote.json by the last run (for the catalog)."""
    record = _read_json(Layout.at(store).mirror_record)
    if not isinstance(record, dict) or not record.get("url"):
        return None
    timeout = float(record.get("timeout_s") or 10)
    settings = ObjectStore(record.get("endpoint"), record.get("region"), timeout)
    return Mirror(Path(store), record["url"], settings)
