"""The project's own exceptions. Entry points turn them into one readable line."""


class PeAnalyzerError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(PeAnalyzerError):
    """A setting is missing, malformed or contradicts another one."""


class SourceError(PeAnalyzerError):
    """The bucket or folder of samples cannot be read."""
