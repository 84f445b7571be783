"""Pytest fixtures shipped with personae, for its own tests and for users testing their graphs.

Enable with ``pytest_plugins = ["personae.testing.pytest_plugin"]`` in a ``conftest.py``
(or ``-p personae.testing.pytest_plugin``). Then::

    @pytest.mark.openai_server(latency_s=0.05, fault_rate=0.2, faults=["429", "500"])
    async def test_my_graph(openai_server):
        async with server_gateway(openai_server, max_retries=8) as gateway:
            ...  # the real openai client, over real HTTP, against a local fake

The ``openai_server`` marker's keyword arguments become the server's
:class:`~personae.testing.server.TestServerConfig`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from personae.llm import Gateway
    from personae.llm.limits import Limits
    from personae.llm.openai_provider import OpenAICompatibleLLM
    from personae.testing.server import OpenAITestServer

__all__ = ["openai_server", "openai_llm", "server_gateway", "ServerGatewayFactory"]

TEST_MODEL = "personae-test-chat"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``openai_server`` marker."""
    config.addinivalue_line(
        "markers", "openai_server(**config): TestServerConfig fields for the openai_server fixture"
    )


@pytest.fixture
def openai_server(request: pytest.FixtureRequest) -> Iterator[OpenAITestServer]:
    """A running :class:`OpenAITestServer` (config from the ``openai_server`` marker), stopped afterwards."""
    from personae.testing.server import OpenAITestServer, TestServerConfig

    marker = request.node.get_closest_marker("openai_server")
    config = TestServerConfig(**marker.kwargs) if marker else TestServerConfig()
    with OpenAITestServer(config) as server:
        yield server


def openai_llm(server: OpenAITestServer, *, model: str = TEST_MODEL, timeout_s: float = 30.0, max_connections: int = 512) -> OpenAICompatibleLLM:
    """The real OpenAI-compatible provider pointed at ``server``."""
    from personae.llm.openai_provider import OpenAICompatibleLLM

    return OpenAICompatibleLLM(model, base_url=server.base_url, api_key="test", timeout_s=timeout_s, max_connections=max_connections)


@asynccontextmanager
async def server_gateway(
    server: OpenAITestServer,
    *,
    model: str = TEST_MODEL,
    timeout_s: float = 30.0,
    **gateway_options: Any,
) -> AsyncIterator[Gateway]:
    """A :class:`~personae.llm.Gateway` over :func:`openai_llm`, closed on exit.

    ``gateway_options`` go to the gateway (``cache``, ``max_concurrency``,
    ``max_retries``, ``retry_base_delay_s``, ``roles``, ``budget``).
    """
    from personae.llm import Gateway

    gateway = Gateway(openai_llm(server, model=model, timeout_s=timeout_s), **gateway_options)
    try:
        yield gateway
    finally:
        await gateway.aclose()


@dataclass(frozen=True)
class ServerGatewayFactory:
    """A picklable recipe for a gateway on a test server, for batches in worker processes
    (``simulate_batch(processes=..., gateway_factory=...)``): called with a worker's limits."""

    base_url: str
    max_concurrency: int = 64
    model: str = TEST_MODEL
    timeout_s: float = 30.0
    max_connections: int = 512

    def __call__(self, limits: Limits) -> Gateway:
        from personae.llm import Gateway
        from personae.llm.openai_provider import OpenAICompatibleLLM

        llm = OpenAICompatibleLLM(self.model, base_url=self.base_url, api_key="test", timeout_s=self.timeout_s,
                                  max_connections=self.max_connections)
        return Gateway(llm, cache=None, max_concurrency=self.max_concurrency, limits=limits)
