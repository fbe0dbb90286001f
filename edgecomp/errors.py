"""Errors edgecomp raises for user mistakes.

Every error here is caught by the command-line tools and printed as one line,
``error: <message>``, with exit status 2 (``exit_code``; 1 for a run whose result
failed, such as a model that did not learn). Messages say what happened, where,
and how to fix it. Anything else escaping the CLI is a bug in edgecomp.
"""


class EdgecompError(Exception):
    """Base class of the errors a user can fix (bad config, bad file, bad device)."""

    exit_code = 2


class ConfigError(EdgecompError):
    """The configuration is invalid: names the dotted key, the value and what is allowed."""


class DataError(EdgecompError):
    """The dataset cannot be loaded or does not have the expected shape."""


class ModelError(EdgecompError):
    """The model cannot be built, loaded, converted or run."""


class TargetError(EdgecompError):
    """A target profile's rule failed for the converted model."""


class DeviceError(EdgecompError):
    """A benchmark device cannot be reached or cannot run the model."""


class OutputError(EdgecompError):
    """An output file or folder cannot be written: not writable, read-only, or the disk is full."""


class NotLearnedError(EdgecompError):
    """The float model ended near chance: compressing it would measure nothing. Exit status 1."""

    exit_code = 1
