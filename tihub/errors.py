"""The error tree. Library code raises these; the CLI prints each as one sentence.

    TihubError                 anything tihub reports to a user
     ├── ConfigError           sources.yaml, options, workspace problems
     ├── FormatError           a file is not a readable embedding / model
     │    ├── NotAnEmbedding   it is something else (LoRA, checkpoint, HTML page, ...)
     │    └── UnsafeFile       it tries something a data file never should (code, bombs, ...)
     ├── CatalogError          the catalogue database
     ├── SourceError           a source could not be indexed
     ├── NetworkError          HTTP, URL safety, timeouts
     │    ├── UnsafeURL        scheme/host/redirect refused
     │    └── DownloadError    a download failed a check
     │         └── HashMismatch
     ├── NotFound              a name/id/hash that nothing matches
     └── EngineError           generation / training (torch side)

Every message is one sentence that names the file, source or value and, where there is one,
the next step. Messages never contain newlines.
"""

from __future__ import annotations


class TihubError(Exception):
    """Base of every error tihub reports."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(TihubError):
    """A configuration file or option is wrong."""


class FormatError(TihubError):
    """A file could not be read as an embedding (or model)."""


class NotAnEmbedding(FormatError):
    """The file is readable, but it is something other than an embedding."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


class UnsafeFile(FormatError):
    """The file contains something a data file never should (code, bombs, escapes)."""


class CatalogError(TihubError):
    """The catalogue database failed or holds unexpected data."""


class SourceError(TihubError):
    """A source could not be indexed."""


class NetworkError(TihubError):
    """An HTTP request failed."""


class UnsafeURL(NetworkError):
    """A URL (or a redirect) was refused: bad scheme, private address, ..."""


class DownloadError(NetworkError):
    """A download finished but failed a check, or could not finish."""


class HashMismatch(DownloadError):
    """The downloaded bytes do not have the expected hash."""


class NotFound(TihubError):
    """A name, id or hash matched nothing."""


class EngineError(TihubError):
    """The generation or training engine failed."""
