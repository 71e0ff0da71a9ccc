"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest

from .helpers import TINY, compose_train


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides: str):
        return compose_train(*TINY, *overrides)

    return make
