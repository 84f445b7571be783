"""Test doubles and fixtures shipped with personae: a local OpenAI-compatible server and pytest fixtures.

Nothing is imported eagerly (``python -m personae.testing.server`` must not find the
module already loaded); the names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["OpenAITestServer", "TestServerConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("personae.testing.server"), name)
    raise AttributeError(f"module 'personae.testing' has no attribute {name!r}")
