"""Specific exceptions. Each message names the file/line/key/value at fault and how to fix it."""


class DistLLMError(Exception):
    """Base class: the CLI prints these as a one-line error instead of a traceback."""


class ConfigError(DistLLMError):
    """A config file, key or override is wrong."""


class DataError(DistLLMError):
    """Input corpus, shard or manifest problem."""


class CheckpointError(DistLLMError):
    """A checkpoint is missing, partial, corrupt or cannot be written."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes are missing or do not match their recorded size/sha256: resuming falls
    back to the previous checkpoint (unlike other errors, e.g. a checkpoint of another model)."""
