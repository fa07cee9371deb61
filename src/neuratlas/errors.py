"""One exception type for problems a user can fix; the CLI prints it as one line, never a traceback."""


class NeuratlasError(Exception):
    """A problem with the user's input (unknown name, bad override, wrong shape, corrupt checkpoint, ...)."""
