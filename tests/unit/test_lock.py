"""The lock files agree with pyproject.toml, and every other fetched tool is pinned."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# Each lock file and the extras of pyproject.toml it is resolved from (`make lock`).
LOCK_SETS = {"runtime": (), "dev": ("dev",), "bench": ("dev", "bench")}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked(name: str) -> dict[str, tuple[Version, int]]:
    """Each package of requirements/NAME.txt: its pinned version and how many hashes."""
    packages: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in (REPO / "requirements" / f"{name}.txt").read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            packages[current] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = packages[current]
            packages[current] = (version, hashes + 1)
    return packages


def requirements_of(extras: tuple[str, ...]) -> list[Requirement]:
    """What pyproject.toml asks for: the project's dependencies, its extras', the build's."""
    texts = list(PROJECT["dependencies"])
    for extra in extras:
        texts += PROJECT["optional-dependencies"][extra]
    build = (REPO / "requirements" / "build.in").read_text().splitlines()
    texts += [line for line in build if line.strip() and not line.startswith("#")]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize("name", LOCK_SETS)
def test_the_lock_satisfies_every_requirement_of_pyproject(name: str) -> None:
    packages = locked(name)
    disagreements = []
    for requirement in requirements_of(LOCK_SETS[name]):
        pinned = packages.get(canonicalize_name(requirement.name))
        if pinned is None:
            disagreements.append(f"{requirement} is not in requirements/{name}.txt")
        elif not requirement.specifier.contains(pinned[0], prereleases=True):
            disagreements.append(f"{requirement} but requirements/{name}.txt pins {pinned[0]}")
    assert not disagreements, "run `make lock`: " + "; ".join(disagreements)


@pytest.mark.parametrize("name", LOCK_SETS)
def test_every_locked_package_has_hashes(name: str) -> None:
    unhashed = [package for package, (_, hashes) in locked(name).items() if hashes == 0]
    assert locked(name) and not unhashed


def test_the_sets_pin_the_same_version_of_what_they_share() -> None:
    runtime, dev, bench = (locked(name) for name in LOCK_SETS)
    assert set(runtime) <= set(dev) <= set(bench)
    assert all(dev[package] == bench[package] for package in dev)
    assert all(runtime[package][0] == dev[package][0] for package in runtime)


def test_the_go_tools_are_installed_at_fixed_versions() -> None:
    """`go install PATH@VERSION` builds the tool from that version's own go.mod and go.sum
    (checked against the checksum database): fixed, as long as the version is."""
    makefile = (REPO / "Makefile").read_text()
    installs = re.findall(r"go install (\S+)@(\S+)", makefile)
    assert installs
    variables = dict(re.findall(r"^(\w+) := (\S+)$", makefile, re.MULTILINE))
    for path, version in installs:
        resolved = variables.get(version.removeprefix("$(").removesuffix(")"), version)
        assert re.fullmatch(r"v\d+\.\d+\.\d+", resolved), f"{path}@{version}"


@pytest.mark.parametrize("directory", ["tools/buf", "clients/typescript"])
def test_the_npm_packages_are_locked_with_integrity_hashes(directory: str) -> None:
    manifest = json.loads((REPO / directory / "package.json").read_text())
    lock = json.loads((REPO / directory / "package-lock.json").read_text())
    root = lock["packages"][""]
    for section in ("dependencies", "devDependencies"):
        assert root.get(section, {}) == manifest.get(section, {})
    installed = {path: entry for path, entry in lock["packages"].items() if path}
    assert installed
    assert all(entry.get("integrity", "").startswith("sha512-") for entry in installed.values())
    makefile = (REPO / "Makefile").read_text()
    assert "npm install --prefix" not in makefile
    assert makefile.count("npm ci") >= 2


def test_the_cargo_builds_are_locked() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert (REPO / "clients/rust/Cargo.lock").is_file()
    cargo_lines = [
        line for line in makefile.splitlines() if re.search(r"cargo (build|install)", line)
    ]
    assert cargo_lines
    assert all("--locked" in line for line in cargo_lines)
