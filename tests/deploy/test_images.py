"""What the images hold and run: constraints.txt, the lock of every package an install takes
(in step with pyproject.toml's pins, used by every install the project documents, and what
this very environment holds), the release's version as every image's tag, torch kept out of
the control plane, and what an image stops without."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)$")


def _name(name: str) -> str:
    """PEP 503's normalised name: ``Django`` and ``django``, ``PyYAML`` and ``pyyaml``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        assert _name(match[1]) not in pins, f"constraints.txt pins {match[1]} twice"
        pins[_name(match[1])] = match[3]
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        match = PIN.match(requirement)
        assert match, f"pyproject.toml: not an exact pin: {requirement!r}"
        pins[_name(match[1])] = match[3]
    return pins


def test_the_lock_holds_every_pin_of_pyproject_at_its_version() -> None:
    lock = _lock()
    stale = {
        name: (version, lock.get(name))
        for name, version in _pyproject_pins().items()
        if lock.get(name) != version
    }
    assert not stale, f"pyproject.toml pin -> constraints.txt (run `make lock`): {stale}"
    assert "margin-api" not in lock  # (the project itself is never a constraint)


def test_every_documented_install_takes_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    # (`make lock` alone installs without it: it makes the lock)
    install = [line for line in makefile.splitlines() if "pip install" in line and "-e '." in line]
    assert len(install) == 1 and "-c constraints.txt" in install[0], install
    assert re.search(r"^\$\(STAMP\): .*constraints\.txt", makefile, re.M), (
        "a changed lock must reinstall"
    )
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^COPY .*constraints\.txt", dockerfile, re.M)
    project_installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert len(project_installs) == 2, project_installs  # the api and the worker image
    assert all("-c constraints.txt" in line for line in project_installs), project_installs


def test_this_environment_holds_what_the_lock_says() -> None:
    """CI installs from scratch as the README says: what it tests is what the lock names.
    (A package of the lock absent here is one another Python version needs.)"""
    drift = {}
    for name, version in _lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if installed.split("+")[0] != version:  # (torch's CPU wheel is 2.13.0+cpu)
            drift[name] = (version, installed)
    assert not drift, f"constraints.txt -> installed: {drift}"


def test_every_release_runs_one_version_of_its_images_never_latest() -> None:
    """The migrations Job, the base and the GPU overlay name the project's version: with
    ``latest`` a rollout could run the code of one build and the migrations of another, and
    a restarted pod whatever was pushed last."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    k8s = ROOT / "deploy" / "k8s"
    tags = []
    for path in sorted(k8s.glob("*/kustomization.yaml")):
        text = path.read_text()
        tags += [(path.parent.name, tag) for tag in re.findall(r"newTag: \"?([^\s\"]+)", text)]
        tags += [(path.parent.name, tag) for tag in re.findall(r"margin-[\w-]+:([\w.-]+)", text)]
    assert {"base", "migrate", "gpu"} <= {where for where, _ in tags}, tags
    assert all(tag == version for _, tag in tags), f"pyproject.toml is {version}: {tags}"


def test_the_worker_image_takes_the_pinned_torch_from_a_cpu_index_by_default() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile
    assert '".[worker]"' in dockerfile
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()
    api_stage = dockerfile.split("FROM source AS api")[1].split("FROM source AS worker")[0]
    assert "[worker]" not in api_stage  # the control plane never installs torch


def test_the_control_plane_stops_at_start_naming_what_its_image_requires(tmp_path) -> None:
    """Without it, a pod whose Secret lacked DATABASE_URL ran on a SQLite file of its own
    (every route failed while /readyz passed), one without SECRET_KEY on the public
    development key."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DATABASE_URL")}
    env |= {"REQUIRED_ENV": "SECRET_KEY DATABASE_URL REDIS_URL", "DATA_DIR": str(tmp_path),
            "REDIS_URL": "redis://127.0.0.1:9/0"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert (
        "ImproperlyConfigured: SECRET_KEY, DATABASE_URL must be set (this image requires"
        " SECRET_KEY DATABASE_URL REDIS_URL)" in run.stderr
    )
    env |= {"SECRET_KEY": "x" * 50, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    run = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
