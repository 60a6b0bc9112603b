"""The one error type of the data readers: bad or missing input, named by its path."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file, folder, drive or setting that cannot be used; `path` names the culprit.

    The message always starts with the path (when there is one) so that a failing run says which
    file to look at, e.g. ``.../0000000007.bin: 1234 bytes is not a multiple of 16``.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(message if path is None else f"{path}: {message}")
