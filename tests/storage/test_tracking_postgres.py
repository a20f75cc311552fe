"""MLflow on a real PostgreSQL: a pretrainlab stage logs through `mlflow server` into it.

Starts a real PostgreSQL (the pgserver wheel's, else Debian's: initdb + postgres in a temp dir,
on a free loopback port; as the unprivileged user `nobody` when the tests run as root) and
`mlflow server --backend-store-uri postgresql://…`, runs the ingest flow with `tracking.uri`
pointing at the server, and finds its run both through MLflow and in PostgreSQL's own tables.
Every process is stopped by its PID (the server by its process group). Skipped, saying why,
where no PostgreSQL server binaries can be found.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.ingest import ingest
from pretrainlab.config import spec_from_dict


def server_binaries() -> list[str]:
    """The pgserver wheel's PostgreSQL (a dev dependency), then Debian's, newest last."""
    found = []
    try:
        import pgserver

        found.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "initdb"))
    except ImportError:
        pass
    found += sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return [path for path in found if Path(path).exists()]


PG_BINARIES = server_binaries()
USER = "nobody"  # PostgreSQL refuses to run as root: a root test runs it as this user
LOOPBACK = ("-c", "listen_addresses=127.0.0.1")

pytestmark = pytest.mark.skipif(
    not PG_BINARIES,
    reason="needs PostgreSQL server binaries: the pgserver wheel (in the dev extras) or "
    "Debian's (apt-get install postgresql)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, group: bool = False) -> None:
    if process.poll() is None:
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGINT)  # postgres: fast shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
            process.wait()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 with a `mlflow` database; yields its URL."""
    import psycopg2

    bindir = Path(PG_BINARIES[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="pretrainlab-pg-"))
    data, log = root / "data", root / "postgres.log"
    as_user: dict = {"cwd": root}
    if os.geteuid() == 0:
        user = pwd.getpwnam(USER)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user |= {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        **as_user,
    )
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [bindir / "postgres", "-D", data, "-p", str(port), "-k", root, *LOOPBACK],
            stdout=out,
            stderr=subprocess.STDOUT,
            **as_user,
        )

    def accepting() -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    try:
        wait_until(accepting, 60, "postgres", process, log)
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3: name the installed driver.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        stop(process)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres: str) -> Iterator[str]:
    """`mlflow server` on a free loopback port with the PostgreSQL backend store."""
    root = Path(tempfile.mkdtemp(prefix="pretrainlab-mlflow-"))
    port, log = free_port(), root / "mlflow.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [mlflow_cli, "server", "--backend-store-uri", postgres, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 180, "mlflow server", process, log)
        yield url
    finally:
        stop(process, group=True)  # the CLI and the web server it started
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_run_lands_in_postgresql(tmp_path: Path, postgres: str, mlflow_server: str) -> None:
    import psycopg2
    from mlflow import MlflowClient

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(f"Document {i} about pretraining on a real database." for i in range(40)),
        encoding="utf-8",
    )
    spec = spec_from_dict(
        {
            "experiment": "pgtest",
            "store": str(tmp_path / "store"),
            "tracking": {"uri": mlflow_server},
            "corpus": {"sources": [{"path": str(corpus)}]},
        }
    )
    result = ingest(spec)
    run_id = result["mlflow_run_id"]

    run = MlflowClient(mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["corpus_id"] == result["corpus_id"]

    dsn = postgres.replace("+psycopg2", "")
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.status, e.name FROM runs r JOIN experiments e USING (experiment_id) "
            "WHERE r.run_uuid = %s",
            (run_id,),
        )
        assert cursor.fetchall() == [("FINISHED", "pgtest")]
        cursor.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run_id,))
        assert cursor.fetchone()[0] > 0
