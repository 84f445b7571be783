"""Pytest fixtures shipped with personae, for its own tests and for users testing their graphs."""
