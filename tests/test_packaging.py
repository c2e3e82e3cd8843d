"""What `pip install flowproof` puts on a machine: one top-level import name, `flowproof`, with
the design card's folders mapped into it (publisher/ is flowproof.publisher, ...) and the files
they read at run time (SQL, Avro schemas, py.typed). Built from a copy of the sources, installed
into a fresh virtualenv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PROJECT["project"]["version"]
DIST_INFO = f"flowproof-{VERSION}.dist-info"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    for folder in set(PROJECT["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--wheel-dir", str(out), str(source)),
        ],
        check=True,
        timeout=300,
    )
    [built] = out.glob("flowproof-*.whl")
    return built


def test_every_package_folder_is_in_the_packages_list() -> None:
    config = PROJECT["tool"]["setuptools"]
    found = set()
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            if package == "flowproof" and relative and relative[0] in ("tests",):
                continue
            found.add(".".join((package, *relative)))
    assert found <= set(config["packages"]), found - set(config["packages"])


def test_the_wheel_holds_only_flowproof_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"flowproof", DIST_INFO}
    for expected in (
        "flowproof/cli.py",
        "flowproof/core/config.py",
        "flowproof/core/sql/migrations/0001_outbox.sql",
        "flowproof/publisher/relay.py",
        "flowproof/publisher/sql/queries.sql",
        "flowproof/consumers/run.py",
        "flowproof/schemas/avro/flowproof.Canary.v1.avsc",
        "flowproof/verifier/checks/__init__.py",
        "flowproof/verifier/sql/flow.sql",
        "flowproof/py.typed",
    ):
        assert expected in names, f"the wheel lacks {expected}"
    assert not [n for n in names if n.startswith("flowproof/tests") or "__pycache__" in n]


def test_installing_the_wheel_adds_only_flowproof_at_the_top_level(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    before = {p.name for p in site.iterdir()}
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=120,
    )
    added = {p.name for p in site.iterdir()} - before
    assert added == {"flowproof", DIST_INFO}
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; "
            "print(*(u.find_spec(m).origin for m in "
            "('flowproof.publisher', 'flowproof.consumers', 'flowproof.schemas', "
            "'flowproof.verifier', 'flowproof.core')))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    assert len(found) == 5 and all(origin.startswith(str(site)) for origin in found), found
