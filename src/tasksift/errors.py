"""User-facing errors.

Every problem with the user's input is raised as :class:`TasksiftError` (or a subclass),
whose message is one line naming the file, row and field where they are known. The CLI
prints ``tasksift: error: <message>`` and exits with code 2; it never shows a traceback
for these.
"""
from __future__ import annotations


class TasksiftError(Exception):
    """A clear, one-line problem with the user's input or settings (CLI exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        self.file, self.row, self.field = file, row, field
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        msg = f"{prefix}: {message}" if prefix else message
        super().__init__(" ".join(msg.split("\n")))


class DataError(TasksiftError):
    """The input data is unreadable, empty or malformed."""


class ConfigError(TasksiftError):
    """A method name, budget or option is invalid."""


class SelectionWarning(UserWarning):
    """A selection that ran but deserves a look (fewer rows than the budget, target examples
    that also sit in the pool). The CLI prints each as one ``tasksift: warning:`` line."""
