"""The config schema's machinery: a field's default, its check and its meaning in one place.

Each config section is a frozen dataclass whose fields are the section's keys
(:class:`fusion_jax.models.ModelConfig` for ``config.model``, the others in
:mod:`fusion_jax.configs`); a field made with :func:`knob` carries its check. From the
dataclass come the ``ConfigDict`` section (:func:`config_dict`), validation
(:func:`check`) and a typed view of a saved or partial section (:func:`view`), so readers
never restate a default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from ml_collections import ConfigDict
from ml_collections import config_dict as ml_config_dict

from fusion_jax.errors import ConfigError


def knob(default, check: Optional[Callable[[Any], bool]] = None, want: str = "",
         doc: str = "", placeholder: Optional[type] = None):
  """A config field: its ``default``, ``check(value) -> bool`` with the words for what it
  must be (``want``), a one-line ``doc``; ``placeholder``: the type of a field whose
  default is None (so ``--config.<field>=`` still parses)."""
  return dataclasses.field(default=default, metadata=dict(check=check, want=want, doc=doc,
                                                          placeholder=placeholder))


def at_least(n):
  return lambda v: v >= n


def positive(v) -> bool:
  return v > 0


def fraction(v) -> bool:   # in [0, 1)
  return 0 <= v < 1


def one_of(*values):
  return lambda v: v in values


def config_dict(cls) -> ConfigDict:
  """The ``ConfigDict`` section of ``cls``'s defaults (a None default as a typed
  placeholder)."""
  out = {}
  for f in dataclasses.fields(cls):
    placeholder = f.metadata.get("placeholder")
    out[f.name] = (ml_config_dict.placeholder(placeholder) if f.default is None and placeholder
                   else f.default)
  return ConfigDict(out)


def check(cls, section, name: str) -> None:
  """Raises :class:`~fusion_jax.errors.ConfigError` naming the first field of ``section``
  (``config.<name>``) whose value fails its check."""
  for f in dataclasses.fields(cls):
    test = f.metadata.get("check")
    value = section[f.name]
    if test is not None and not (value is None and f.default is None) and not test(value):
      field = f"{name}.{f.name}"
      raise ConfigError(f"config.{field} = {value!r} must be {f.metadata['want']} "
                        f"(--config.{field})")


def view(cls, section):
  """``cls`` from a (saved, perhaps older) section: a key the schema no longer has is
  left out, a key the section lacks takes the schema's default."""
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in dict(section or {}).items() if k in names})


def docs(cls) -> dict:
  """``{field: one-line doc}`` of ``cls``."""
  return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
