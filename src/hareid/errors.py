"""User-facing errors.

Every problem a user can fix (a missing dataset folder, a bad config key, a checkpoint of the wrong
model) is raised as :class:`HareidError` with a one-line message that names the file and the fix.
The command line prints that line and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations


class HareidError(Exception):
    """An error the user can act on; its message is one line naming the path and the fix."""


class DataError(HareidError, ValueError):
    """A dataset folder, manifest or image that cannot be read as expected."""


class ConfigError(HareidError, ValueError):
    """A config file or override that does not match the typed config."""


class CheckpointError(HareidError, ValueError):
    """A checkpoint that is missing, corrupt, unsafe, or for another model."""
