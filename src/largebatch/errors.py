"""The one exception type for mistakes a user can fix (bad option, bad recipe, bad data).

The command line prints these as a single line and exits 2, never with a traceback; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that names the file or option and the fix."""


class ConfigError(UserError):
    """A recipe key or command-line option that is unknown or has a bad value."""


class DataError(UserError):
    """A data set that is missing, malformed or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or from another model."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt, truncated) and an older one used; the command line prints
    it as one line, ``largebatch: warning: ...``."""


class Interrupted(UserError):
    """A run stopped by a signal (SIGTERM, SIGINT) after saving its checkpoint. The command line
    exits with ``exit_code`` = 128 + the signal number, as a shell reports a process killed by it,
    so schedulers and torchrun's elastic agent never take a preempted run for a finished one."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
