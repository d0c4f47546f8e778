"""Errors raised by the studio core, written for the person using it.

Every message says what is wrong and what to do about it. The UI and the CLI
show `str(error)` as it is; they never need a stack trace to be understood.
"""


class StudioError(Exception):
    """Base class: something the user can fix, described in plain words."""


class ConfigError(StudioError):
    """A recipe or override is wrong: unknown key, wrong type, bad value."""


class ModelLoadError(StudioError):
    """A model cannot be found or loaded."""


class DataError(StudioError):
    """A dataset cannot be read, or a row is malformed (file and line named)."""


class TemplateError(StudioError):
    """A prompt template cannot render the rows, or masks every label."""


class TrainingError(StudioError):
    """Training cannot start or continue."""


class RunNotFoundError(StudioError):
    """A run folder does not exist or is not a run."""


class ExportError(StudioError):
    """An export cannot be written or failed its verification."""


class DiskSpaceError(ExportError):
    """Not enough free disk for what is about to be written."""


class BusyError(StudioError):
    """Another GPU job is running; one job at a time."""


class RunBusyError(BusyError):
    """Another process is training or exporting this run."""
