"""Error types that decide how a failure is shown to the person at the terminal."""


class UserError(Exception):
    """Bad input or a missing prerequisite the user can fix.

    Shown as one line (the message names the thing and the fix), exit status 1,
    no traceback. Everything else is an internal error and keeps its traceback.
    """


class UsageError(UserError):
    """The command line itself is wrong (a missing or conflicting flag): exit status 2, like a
    command-line parser's, so a script can tell it from a run that found something."""


class StepFailed(UserError):
    """An external step (Packer, mmdebstrap, QEMU) failed; the message points at its log."""


class HostKeyMismatch(UserError):
    """The machine under test presented a host key that the console did not announce."""


class VerificationError(Exception):
    """Verification could not run to completion (not a failing control: a broken run)."""
