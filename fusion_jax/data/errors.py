"""Kept for imports of ``fusion_jax.data.errors``; the errors live in :mod:`fusion_jax.errors`."""

from fusion_jax.errors import DataError  # noqa: F401
