"""The versions the project declares are the ones it is tested with: pyproject.toml's floors are the floor
environment's pins (.ci/floor-constraints.txt, which .ci/floor.sh installs and runs a study in), and a driver whose
Ray or Optuna is below its floor says so in one line, exit status 2, before importing either."""
import importlib.metadata
import re
import tomllib

import pytest
from conftest import REPO

from recipe.config import RecipeError
from search import run as search_run

# The dependencies whose floors the floor environment pins, numpy among them (what pandas, pyarrow and Ray are built on).
PINNED = {"ray", "optuna", "pandas", "pyarrow", "plotly", "sqlalchemy", "scikit-learn", "numpy"}


def pyproject_floors() -> dict[str, str]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    found = (re.fullmatch(r"([a-z0-9-]+)(?:\[[a-z,]+\])?>=([0-9.]+)", d) for d in dependencies)
    return {m[1]: m[2] for m in found if m}


def constraint_pins() -> dict[str, str]:
    lines = (REPO / ".ci" / "floor-constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_pyprojects_floors_equal_the_floor_environments_pins():
    pins = constraint_pins()
    assert set(pins) == PINNED
    assert {name: pyproject_floors().get(name) for name in PINNED} == pins


def test_the_driver_reads_the_floors_pyproject_declares():
    floors = search_run.declared_floors()
    assert {name: floors[name] for name in PINNED} == {name: pyproject_floors()[name] for name in PINNED}


def test_installed_without_its_pyproject_the_driver_reads_the_floors_from_the_projects_metadata(tmp_path, monkeypatch):
    requires = ["torch>=2.4", "ray[tune]>=2.45.0", "optuna>=4.2.0", 'pytest>=8; extra == "dev"']
    monkeypatch.setattr(search_run, "PYPROJECT", tmp_path / "pyproject.toml")
    monkeypatch.setattr(importlib.metadata, "requires", lambda dist: requires if dist == "cifar100-hpo" else None)
    assert search_run.declared_floors() == {"torch": "2.4", "ray": "2.45.0", "optuna": "4.2.0"}


def installed_as(monkeypatch, name: str, version: str | None) -> None:
    """importlib.metadata says `name` is installed at `version` (None: not installed); the rest as they are."""
    real = importlib.metadata.version

    def version_of(dist: str) -> str:
        if dist != name:
            return real(dist)
        if version is None:
            raise importlib.metadata.PackageNotFoundError(dist)
        return version

    monkeypatch.setattr(importlib.metadata, "version", version_of)


def below(floor: str) -> str:
    major, minor, *_ = map(int, floor.split("."))
    return f"{major}.{minor - 1}.9" if minor else f"{major - 1}.99.0"


@pytest.mark.parametrize("name", ["ray", "optuna"])
def test_a_driver_below_the_floor_of_ray_or_optuna_is_one_line_and_exit_2_before_importing_them(
        tmp_path, no_ray, monkeypatch, capsys, name):
    floor = search_run.declared_floors()[name]
    installed_as(monkeypatch, name, below(floor))
    with pytest.raises(SystemExit) as exit_:
        search_run.main(["--study", "smoke", "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err == f"error: {name} {below(floor)} is installed, older than this project's floor: install {name}>={floor}" \
                  f"{' that your cluster runs too' if name == 'ray' else ''}\n"
    assert not (tmp_path / "results").exists()


def test_a_driver_without_ray_installed_says_so_in_one_line(no_ray, monkeypatch):
    installed_as(monkeypatch, "ray", None)
    with pytest.raises(RecipeError, match=r"^ray is not installed; this project needs ray>=\d+\.\d+\.\d+$"):
        search_run.check_engines()


@pytest.mark.parametrize("version", ["floor", "floor.post1", "newer"])
def test_a_ray_at_or_above_the_floor_passes(no_ray, monkeypatch, version):
    floor = search_run.declared_floors()["ray"]
    major, minor, *_ = map(int, floor.split("."))
    installed = {"floor": floor, "floor.post1": f"{floor}.post1", "newer": f"{major}.{minor + 1}.0"}[version]
    installed_as(monkeypatch, "ray", installed)
    search_run.check_engines()


def test_on_a_ray_without_token_authentication_joining_a_cluster_checks_only_that_it_answers(monkeypatch):
    from ray.exceptions import RpcError

    from search import cluster

    def no_token_check(*args, **kwargs):
        raise AssertionError("a token check on a Ray without token authentication")

    def nobody_answers(address):
        raise RpcError("Timed out while waiting for GCS to become available.")

    monkeypatch.setattr(cluster, "TOKEN_AUTH", False)
    monkeypatch.setattr(cluster, "ensure_token_if_auth_enabled", no_token_check, raising=False)
    monkeypatch.setattr(cluster, "get_authentication_mode", no_token_check, raising=False)
    monkeypatch.setattr(cluster, "GcsClient", nobody_answers)
    with pytest.raises(RecipeError, match=r"^--address 10\.0\.0\.1:6379: no Ray cluster answers there \(Timed out "):
        cluster.check_cluster_admits_driver("10.0.0.1:6379")
    cluster.check_cluster_reaches_driver("10.0.0.1:6379")  # no probe: ray is not even initialised here
