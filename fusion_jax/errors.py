"""The errors a user can fix, rooted in one :class:`UserError`.

A binary's single boundary (:func:`fusion_jax.cli.main`) prints a ``UserError`` as one
``error:`` line and exits 2; any other exception is a bug in the library and keeps its
traceback. Each subclass is also the built-in type callers already catch (a ``DataError`` is a
``ValueError``, a ``MissingDependency`` an ``ImportError``), so library users lose nothing.

Which to raise:

* :class:`DataError` — a file or its content is wrong; names the file, the field, the row.
* :class:`ConfigError` — a setting (config field or flag) is wrong or settings disagree.
* :class:`MissingDependency` — an optional package or model snapshot is not installed.
* :class:`Divergence` — training became NaN/inf; the message says which knob to turn.
"""

from __future__ import annotations

from typing import Optional


def one_line(text) -> str:
  """``text`` with every run of whitespace (newlines included) made one space."""
  return " ".join(str(text).split())


class UserError(Exception):
  """A problem the user can fix; its message is one line that says what to do."""

  def __init__(self, message):
    super().__init__(one_line(message))


class DataError(UserError, ValueError):
  """Bad input data. The message names the file, the field and the first bad row.

  Attributes:
    path: the file that holds the problem.
    field: the field (dict key, CSV column, pickle global, ...) at fault, if any.
    row: the first bad row (0-based utterance index), if the problem has one.
  """

  def __init__(self, path, problem: str, *, field: Optional[str] = None,
               row: Optional[int] = None, hint: Optional[str] = None):
    self.path = str(path)
    self.field = field
    self.row = row
    self.problem = one_line(problem)   # one line, whatever a library said
    where = [self.path]
    if field is not None:
      where.append(f"field '{field}'")
    if row is not None:
      where.append(f"row {row}")
    message = ", ".join(where) + f": {self.problem}"
    if hint:
      message += f" ({hint})"
    super().__init__(message)


class ConfigError(UserError, ValueError):
  """A config field or flag has a bad value, or two settings disagree."""


class MissingDependency(UserError, ImportError):
  """An optional package, weight package or model snapshot is not installed."""


class Divergence(UserError, FloatingPointError):
  """Training produced a non-finite loss."""
