"""Typed user errors. Every message names the problem and the fix.

`run.py` prints a `GPT2JaxError` as one line and exits non-zero (no stack trace); the API
raises them as they are. Subclasses also derive from the builtin they refine (ValueError,
FileNotFoundError, ...) so that generic handlers keep working.
"""


class GPT2JaxError(Exception):
    """Base class of every error caused by user input (config, files, arguments)."""


class ConfigError(GPT2JaxError, ValueError):
    """A configuration or argument that cannot work."""


class DataError(GPT2JaxError, ValueError):
    """A data file or dataset that is missing, empty, too short or undecodable."""


class WeightsError(GPT2JaxError, ValueError):
    """A checkpoint / weights file that is missing, truncated or does not fit the model."""
