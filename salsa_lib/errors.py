"""The project's error types: each message names the file, row, key or value that is wrong."""


class SalsaError(Exception):
    """Base class, so callers (the runner, the CLI) can print the message without a traceback."""


class ConfigError(SalsaError, ValueError):
    """An unknown, missing or ill-typed parameter."""


class DataError(SalsaError, ValueError):
    """Bad input data: unreadable audio, malformed CSV, missing files."""


class DownloadError(SalsaError, RuntimeError):
    """A file could not be fetched or verified; the message says how to place it by hand."""


class NonFiniteError(SalsaError, ValueError):
    """NaN or infinite numbers where a result is made (a loss, embeddings, a metric): never ranked or kept."""
