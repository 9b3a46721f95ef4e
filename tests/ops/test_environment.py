"""The environment: the lock files agree with pyproject.toml (and with each other), every
third-party import is a declared dependency, telemetry is off unless the user turns it on,
LICENSE is the license pyproject names. Nothing here installs anything."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ssp.ops import telemetry

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
TORCH_LOCK = ROOT / "requirements-torch.lock"
SERVERS_LOCK = ROOT / "requirements-servers.lock"
SOURCE_DIRS = ("ssp", "flows", "bench", "infra", "tests")
FIRST_PARTY = {"ssp", "flows", "tests", "bench", "infra"}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def read_lock(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a pip-compile lock file. Fails on any line it does not
    understand: a lock holds pins with hashes and comments only."""
    entries: dict[str, tuple[str, set[str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if match := _PIN.match(line):
            current = canonicalize_name(match[1])
            assert current not in entries, f"{path.name}:{number}: {current} pinned twice"
            entries[current] = (match[2], set())
        else:
            assert line.startswith(" ") and current is not None, f"{path.name}:{number}: not a pin: {line!r}"
        entries[current][1].update(_HASH.findall(line))
    return {name: (version, frozenset(hashes)) for name, (version, hashes) in entries.items()}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(group: str | None = None) -> list[Requirement]:
    project = pyproject()["project"]
    if group is None:
        return [Requirement(r) for r in project["dependencies"]]
    return [Requirement(r) for r in project["optional-dependencies"][group]]


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"pyproject.toml: {requirement} is not pinned with =="
    return spec.version


def dependency_closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need on this interpreter, read from the installed
    packages' metadata (markers evaluated, extras followed)."""
    seen: set[tuple[str, str]] = set()
    todo = [(r, "") for r in roots]
    names: set[str] = set()
    while todo:
        requirement, parent_extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(requirement.name)
        names.add(name)
        for extra in [""] + sorted(requirement.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for line in md.requires(name) or []:
                child = Requirement(line)
                if extra or child.marker is None or "extra" not in str(child.marker):
                    todo.append((child, extra))
    return names


# -- lock files -----------------------------------------------------------------------------


def test_lock_pins_every_direct_dependency_of_pyproject_at_its_version():
    lock = read_lock(LOCK)
    for requirement in declared() + declared("dev"):
        name = canonicalize_name(requirement.name)
        assert name in lock, f"requirements.lock lacks {requirement} (pyproject.toml): run `make lock`"
        assert lock[name][0] == pinned_version(requirement), (
            f"requirements.lock pins {name}=={lock[name][0]}, pyproject.toml {requirement}: run `make lock`"
        )
        for extra in requirement.extras:  # psycopg[binary] -> psycopg-binary, same version
            extra_names = {
                canonicalize_name(Requirement(r).name)
                for r in md.requires(name) or []
                if Requirement(r).marker is not None and Requirement(r).marker.evaluate({"extra": extra})
            }
            assert extra_names <= set(lock), f"requirements.lock lacks {extra_names - set(lock)} ({requirement})"


def test_lock_is_the_dependency_closure_of_the_project_with_hashes():
    lock = read_lock(LOCK)
    assert not [name for name, (_, hashes) in lock.items() if not hashes], "pins without hashes"
    closure = dependency_closure(declared() + declared("dev"))
    assert set(lock) == closure, (
        f"requirements.lock vs what pyproject.toml needs: extra {sorted(set(lock) - closure)}, "
        f"missing {sorted(closure - set(lock))}: run `make lock`"
    )
    # the project is built with the locked setuptools (`pip install --no-build-isolation`)
    (build_requirement,) = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    assert build_requirement.specifier.contains(lock[canonicalize_name(build_requirement.name)][0])


def test_torch_lock_is_the_torch_part_of_the_main_lock():
    lock, torch_lock = read_lock(LOCK), read_lock(TORCH_LOCK)
    roots = [r for r in declared() if canonicalize_name(r.name) in {"torch", "torchvision"}]
    assert len(roots) == 2
    assert set(torch_lock) == dependency_closure(roots)
    for name, entry in torch_lock.items():
        assert entry == lock[name], f"{name}: requirements-torch.lock and requirements.lock differ: run `make lock`"


def test_servers_lock_pins_infra_requirements_and_agrees_with_the_main_lock():
    lock, servers = read_lock(LOCK), read_lock(SERVERS_LOCK)
    wanted = [
        Requirement(line)
        for line in (ROOT / "infra/requirements-servers.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for requirement in wanted:
        assert servers[canonicalize_name(requirement.name)][0] == pinned_version(requirement), requirement
    for name in set(servers) & set(lock):
        assert servers[name] == lock[name], f"{name}: requirements-servers.lock and requirements.lock differ"
    assert all(hashes for _, hashes in servers.values())


def test_every_install_path_installs_from_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile[makefile.index("$(STAMP):") : makefile.index("touch $(STAMP)")]
    assert re.search(r"^PIP_LOCKED := .*--no-deps --require-hashes$", makefile, re.M)
    # the main lock split (test above), then every part with hashes, then the project
    split = setup.index("infra/split_lock.py $(LOCK) --minus $(TORCH_LOCK)")
    steps = [
        setup.index(f"pip install $(PIP_LOCKED) -r $({part})") for part in ("FIRST_LOCK", "TORCH_LOCK", "REST_LOCK")
    ]
    assert split < steps[0] < min(steps[1:]) and max(steps) < setup.index("--no-deps --no-build-isolation -e .")
    assert "pip install -q -e" not in setup
    dockerfile = (ROOT / "infra/Dockerfile").read_text()
    assert dockerfile.index("-r requirements-torch.lock") < dockerfile.index(
        "-r requirements.lock -r requirements-servers.lock"
    )
    assert "pip install --no-deps --no-build-isolation -e ." in dockerfile
    assert "make setup" in (ROOT / ".ci/run").read_text()


# -- declared dependencies = imported ones -------------------------------------------------------


@functools.cache
def third_party_imports() -> dict[str, set[str]]:
    """top-level module -> files importing it (absolute imports and pytest.importorskip),
    standard library and the repository's own packages left out."""
    found: dict[str, set[str]] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "importorskip"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    modules = [node.args[0].value]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY:
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    runtime = {canonicalize_name(r.name) for r in declared()}
    dev = {canonicalize_name(r.name) for r in declared("dev")}
    distributions = md.packages_distributions()
    problems = []
    for module, files in sorted(third_party_imports().items()):
        if module == "a_module_that_is_not_there":  # tests/test_skip_policy.py: a skip on purpose
            continue
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not owners:
            problems.append(f"{module}: no installed distribution provides it ({sorted(files)[0]})")
            continue
        in_package = [f for f in files if f.startswith(("ssp/", "flows/"))]
        allowed = runtime if in_package else runtime | dev
        if not owners & allowed:
            where = "dependencies" if in_package else "dependencies or dev"
            problems.append(f"{module} ({'/'.join(sorted(owners))}) imported by {sorted(files)} not in {where}")
    assert not problems, "pyproject.toml:\n" + "\n".join(problems)


def test_the_import_scan_sees_imports_of_every_kind():
    # the scan must not pass because it reads nothing: it finds the known direct imports,
    # function-level ones included (bench/probes.py imports sklearn inside a function)
    imports = third_party_imports()
    assert {"torch", "mlflow", "prefect", "dvc", "networkx", "sklearn", "psutil", "docker"} <= set(imports)
    assert "flows/dvc_stages.py" in imports["networkx"]
    assert "os" not in imports and "ssp" not in imports


# -- telemetry -----------------------------------------------------------------------------------

# what each tool says about its own telemetry, asked through its own API (run in a fresh
# process: Prefect and MLflow read their settings at import)
_TOOL_SETTINGS = """
import json
import dvc.analytics
import mlflow.telemetry
from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY
from prefect.settings import get_current_settings

settings = get_current_settings()
print("TOOLS=" + json.dumps({
    "dvc_analytics": dvc.analytics.is_enabled(),
    "prefect_server_analytics": settings.server.analytics_enabled,
    "prefect_orchestration_telemetry": settings.cloud.enable_orchestration_telemetry,
    "mlflow_telemetry": not MLFLOW_DISABLE_TELEMETRY.get(),
    "mlflow_telemetry_client": mlflow.telemetry.get_telemetry_client() is not None,
}))
"""

# the entry points, as they run: the flow entry imports Prefect and MLflow before its main()
# (flows/reproduce.py); the CLI imports them after (the subcommand modules)
_FLOW_ENTRY = "import flows.reproduce as entry\nentry.reproduce = lambda **kwargs: None\nentry.main([])\n"
_CLI_ENTRY = "import ssp.cli\nssp.cli.main(['--help'])\n"


def tool_settings(entry: str, tmp_path: Path, user_env: dict[str, str]) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if k not in telemetry.TELEMETRY_OFF}
    # the tools also stay quiet under CI or pytest; without those markers the answers are
    # their settings alone
    for marker in ("CI", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "GITHUB_ACTIONS", "DVC_TEST", "DO_NOT_TRACK"):
        env.pop(marker, None)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),  # DVC's global config, MLflow's installation id
        PREFECT_HOME=str(home / ".prefect"),
        PYTHONPATH=str(ROOT),
        **user_env,
    )
    code = "import sys\ntry:\n" + "".join(f"    {line}\n" for line in entry.splitlines())
    code += "except SystemExit:\n    pass\n" + _TOOL_SETTINGS
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("TOOLS=")]
    return json.loads(line.removeprefix("TOOLS="))


def test_entry_point_turns_every_tools_telemetry_off(tmp_path):
    settings = tool_settings(_FLOW_ENTRY, tmp_path, {})
    assert settings == {
        "dvc_analytics": False,
        "prefect_server_analytics": False,
        "prefect_orchestration_telemetry": False,
        "mlflow_telemetry": False,
        "mlflow_telemetry_client": False,
    }


def test_the_users_setting_wins_over_the_default(tmp_path):
    user_on = {
        "DVC_NO_ANALYTICS": "",  # DVC: set but empty = not disabled
        "PREFECT_SERVER_ANALYTICS_ENABLED": "true",
        "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "true",
        "MLFLOW_DISABLE_TELEMETRY": "false",
    }
    assert set(user_on) == set(telemetry.TELEMETRY_OFF)
    settings = tool_settings(_CLI_ENTRY, tmp_path, user_on)
    assert settings == {
        "dvc_analytics": True,  # tmp_path is no DVC repository and HOME has no DVC config
        "prefect_server_analytics": True,
        "prefect_orchestration_telemetry": True,
        "mlflow_telemetry": True,
        "mlflow_telemetry_client": True,
    }


def test_quiet_by_default_sets_only_what_the_user_left_unset():
    environ = {"MLFLOW_DISABLE_TELEMETRY": "false", "PATH": "/bin"}
    applied = telemetry.quiet_by_default(environ)
    assert applied == {k: v for k, v in telemetry.TELEMETRY_OFF.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    assert environ["MLFLOW_DISABLE_TELEMETRY"] == "false" and environ["DVC_NO_ANALYTICS"] == "1"
    assert telemetry.quiet_by_default(environ) == {}


def test_repository_dvc_config_turns_analytics_off():
    config = (ROOT / ".dvc/config").read_text()
    assert re.search(r"^\[core\][^\[]*^\s*analytics\s*=\s*false\s*$", config, re.M | re.S), config


def test_makefile_image_and_compose_set_the_same_telemetry_switches():
    makefile = dict(re.findall(r"^export (\w+) \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M))
    dockerfile = dict(re.findall(r"\b(\w+)=(\S+?)(?:\s*\\)?$", (ROOT / "infra/Dockerfile").read_text(), re.M))
    compose = yaml.safe_load((ROOT / "infra/docker-compose.yml").read_text())

    def compose_default(value: str) -> str:  # ${NAME:-default} / ${NAME-default}
        match = re.fullmatch(r"\$\{(\w+):?-(.*)\}", str(value))
        assert match, value
        return match[2]

    pipeline = {k: compose_default(v) for k, v in compose["x-pipeline"]["environment"].items() if k in makefile}
    services = compose["services"]
    for name, off in telemetry.TELEMETRY_OFF.items():
        assert makefile.get(name) == off, f"Makefile: export {name} ?= {off}"
        assert dockerfile.get(name) == off, f"infra/Dockerfile: ENV {name}={off}"
        assert pipeline.get(name) == off, f"infra/docker-compose.yml x-pipeline: {name}"
    assert compose_default(services["mlflow"]["environment"]["MLFLOW_DISABLE_TELEMETRY"]) == "true"
    assert compose_default(services["prefect-server"]["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"]) == "false"


# -- license ---------------------------------------------------------------------------------------


def test_license_file_is_the_apache_2_text_pyproject_names():
    assert pyproject()["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("path", [LOCK, TORCH_LOCK, SERVERS_LOCK])
def test_lock_files_say_how_they_are_made(path):
    assert "#    make lock\n" in path.read_text()[:400]


def test_setup_installs_the_torch_lock_beside_the_rest_and_nothing_twice(tmp_path):
    """`make setup`'s two side-by-side pip processes (infra/split_lock.py): together with the
    fresh venv's packages they install exactly requirements.lock, entry for entry, and no
    package is in both halves."""
    spec = importlib.util.spec_from_file_location("split_lock", ROOT / "infra" / "split_lock.py")
    split_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(split_lock)
    first, rest = tmp_path / "first.lock", tmp_path / "rest.lock"
    assert split_lock.main([str(LOCK), "--minus", str(TORCH_LOCK), "--first", str(first), "--rest", str(rest)]) == 0
    lock, torch_lock = read_lock(LOCK), read_lock(TORCH_LOCK)
    first_lock, rest_lock = read_lock(first), read_lock(rest)
    assert set(first_lock) == {"setuptools"}  # what `python -m venv` brings and the lock pins
    assert not set(rest_lock) & (set(torch_lock) | set(first_lock))
    assert {**first_lock, **torch_lock, **rest_lock} == lock
