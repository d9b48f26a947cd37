"""Specific exceptions. Each message names the file/line/key/value at fault and how to fix it."""


class DistLLMError(Exception):
    """Base class: the CLI prints these as a one-line error instead of a traceback."""


class ConfigError(DistLLMError):
    """A config file, key or override is wrong."""


class DataError(DistLLMError):
    """Input corpus, shard or manifest problem."""


class CheckpointError(DistLLMError):
    """A checkpoint is missing, partial, corrupt or cannot be written."""
