"""One error type for every bad input, naming the file, the field and the row."""

from __future__ import annotations

from typing import Optional


class DataError(ValueError):
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
    problem = " ".join(str(problem).split())   # one line, whatever a library said
    self.problem = problem
    where = [self.path]
    if field is not None:
      where.append(f"field '{field}'")
    if row is not None:
      where.append(f"row {row}")
    message = ", ".join(where) + f": {problem}"
    if hint:
      message += f" ({hint})"
    super().__init__(message)
