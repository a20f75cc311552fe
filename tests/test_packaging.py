"""The flat layout ships every package: build the wheel and import each package from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrainlab", "flows", "tasks", "pipelines", "storage")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("pretrainlab-*.whl")
    return path


def test_wheel_contains_every_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, f"{package} missing from {wheel.name}"
    assert not any(name.startswith("tests/") for name in names)


def test_wheel_ships_the_demo_data_package_and_no_storage_data(wheel: Path) -> None:
    """The demo datasets are code (registry, pins, builders): every module of the package is in
    the wheel, and storage/ ships no data files of its own."""
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "pipelines" / "demo_data"
    modules = {f"pipelines/demo_data/{p.name}" for p in package.glob("*.py")}
    assert len(modules) > 1 and modules <= names, sorted(modules - names)
    assert not any(n.startswith("storage/") and not n.endswith(".py") for n in names)


def test_every_package_imports_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    modules = [
        "pretrainlab.cli",
        "flows.pipeline",
        "tasks.ingest",
        "pipelines.data.ingest",
        "pipelines.demo_data",
        "storage.catalog",
    ]
    code = (
        f"import sys; sys.path.insert(0, {str(wheel)!r})\n"
        f"import importlib\n"
        f"for name in {modules!r}:\n"
        f"    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(wheel)!r}), (name, module.__file__)\n"
        f"print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_console_script_is_declared(wheel: Path) -> None:
    entry_points = next(
        n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")
    )
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "pretrainlab = pretrainlab.cli:app" in text
