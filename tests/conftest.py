"""Shared fixtures: the real default encoder, loaded once per test session."""
from __future__ import annotations

import pytest

from rag.encoders import load_encoder


@pytest.fixture(scope="session")
def encoder():
    return load_encoder()
