"""The small error hierarchy shared by every layer of edgecc."""


class EdgeccError(Exception):
    """Base class of every error edgecc raises on purpose."""


class ConfigError(EdgeccError, ValueError):
    """A scheme, model or scenario configuration is invalid."""


class DataError(EdgeccError):
    """A dataset file is missing, truncated or malformed."""


class ModelFileError(EdgeccError):
    """A model file or worker bundle is missing, corrupted or of an unknown format."""


class DecodeError(EdgeccError):
    """Results cannot be decoded (for example fewer than R of them)."""
