"""User-facing errors: the CLI prints these as one line, without a traceback."""


class ScanError(Exception):
    """A problem with the user's input or run directory, explained in one line."""


class WriteError(ScanError):
    """A file could not be written (disk full, read-only folder); what was written before stays."""
