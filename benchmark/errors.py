"""The one exception type that reaches the user as a single line and exit code 2."""


class UserError(Exception):
    """A problem with what the user asked for or pointed us at.

    The message must say what is wrong and what to do about it, in one line; the CLI
    prints it without a traceback (unless --debug) and exits with code 2.
    """

    exit_code = 2
