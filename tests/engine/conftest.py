"""Fixtures of the engine tests: one generated benchmark for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.benchmark import make_benchmark


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> dict[str, Path]:
    return make_benchmark(tmp_path_factory.mktemp("bench"))
