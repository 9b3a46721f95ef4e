"""The CI skip policy of tests/conftest.py: under ``SSP_NO_SKIPS=1`` (``.ci/run``) / ``CI=1``
/ ``--no-skips`` a skip fails, unless its reason names a documented environment (docker
compose); otherwise skips stay skips. Run on a small test file in a pytest subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = textwrap.dedent(
    """
    import pytest

    def test_plain_skip():
        pytest.skip("no .venv/bin/torchrun")

    def test_compose_skip():
        pytest.skip("no docker client with the compose plugin (`docker compose`) here")

    @pytest.fixture
    def server():
        pytest.skip("PostgreSQL server binaries not found")

    def test_fixture_skip(server):
        pass

    @pytest.mark.skipif(True, reason="not on this platform")
    def test_marker_skip():
        pass

    def test_import_skip():
        pytest.importorskip("a_module_that_is_not_there")

    @pytest.mark.xfail(reason="a known bug", strict=True)
    def test_known_bug():
        assert False

    def test_passes():
        pass
    """
)


def run_cases(tmp_path: Path, *args: str, **env: str) -> tuple[int, dict[str, str]]:
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    clean = {k: v for k, v in os.environ.items() if k not in {"CI", "SSP_NO_SKIPS", "PYTEST_XDIST_WORKER"}}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-v"]
        + ["-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py"), *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # verbose lines "...test_cases.py::test_x OUTCOME [ n%]"; a skip in setup that fails is an ERROR
    outcomes = dict(re.findall(r"::(test_\w+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL)", out.stdout))
    return out.returncode, outcomes | {"_output": out.stdout + out.stderr}


@pytest.mark.parametrize("how", [("--no-skips",), ("SSP_NO_SKIPS", "1"), ("CI", "true")])
def test_under_ci_a_skip_fails_unless_it_names_docker_compose(tmp_path, how):
    args, env = (how, {}) if how[0].startswith("--") else ((), {how[0]: how[1]})
    code, outcomes = run_cases(tmp_path, *args, **env)
    output = outcomes.pop("_output")
    assert code == 1, output
    assert outcomes == {
        "test_plain_skip": "FAILED",
        "test_compose_skip": "SKIPPED",
        "test_fixture_skip": "ERROR",  # skipped in setup: fails in setup
        "test_marker_skip": "ERROR",
        "test_import_skip": "FAILED",
        "test_known_bug": "XFAIL",
        "test_passes": "PASSED",
    }, output
    assert "skipped under CI" in output and "PostgreSQL server binaries not found" in output


def test_outside_ci_skips_stay_skips(tmp_path):
    code, outcomes = run_cases(tmp_path, CI="0")
    output = outcomes.pop("_output")
    assert code == 0, output
    assert [name for name, outcome in outcomes.items() if outcome == "SKIPPED"] == [
        "test_plain_skip",
        "test_compose_skip",
        "test_fixture_skip",
        "test_marker_skip",
        "test_import_skip",
    ], output
