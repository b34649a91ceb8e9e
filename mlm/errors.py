"""User-facing errors: what went wrong and what to do, in one line."""


class MlmError(Exception):
    """An error caused by the user's input, not by a bug in `mlm`.

    The CLI prints `str(error)` on one line and exits with status 2, without
    a traceback. The message must name the problem and the fix, and show the
    value received, e.g. `"... but received sequence_length=1024."`.
    """


class RunStopped(Exception):
    """Training stopped on request (SIGTERM or SIGINT) after writing a checkpoint.

    Not a failure: the CLI prints the message, which says how to resume, and
    exits with status 128 + `signum`, as a process ended by that signal would.
    """

    def __init__(self, message: str, *, signum: int):
        super().__init__(message)
        self.signum = signum
