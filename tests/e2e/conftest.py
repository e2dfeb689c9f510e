"""Fixtures that start `capctl serve` (`LocalApi`) on a free port and stop it after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capctl.serve import LocalApi
from tests.e2e.serving import SERVER_ENV


@pytest.fixture
def api_on(tmp_path: Path) -> Iterator[Callable[..., LocalApi]]:
    """``api_on(database_url, **LocalApi options)``: a started server over that database, its log
    in tmp_path; every one is stopped after the test."""
    started: list[LocalApi] = []

    def start(url: str, **options: Any) -> LocalApi:
        env = {**SERVER_ENV, **options.pop("env", {})}
        api = LocalApi(database_url=url, env=env, log_path=tmp_path / f"serve-{len(started)}.log", **options)
        started.append(api)
        api.start()
        return api

    yield start
    for api in started:
        api.stop()


@pytest.fixture
def serve(seeded_db: str, api_on: Callable[..., LocalApi]) -> Callable[..., LocalApi]:
    """``serve(**LocalApi options)``: a started server over the seeded database."""

    def start(**options: Any) -> LocalApi:
        return api_on(seeded_db, **options)

    return start
