"""Shared fixtures (helpers that tests import live in ``tests/helpers.py``)."""

from __future__ import annotations

import pytest

from tests.helpers import mixture_data


@pytest.fixture
def data():
    X, _, _ = mixture_data()
    return X
