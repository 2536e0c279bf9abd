"""The one exception type the command line turns into a clear message and a non-zero exit."""


class NarvlError(Exception):
    """A user-facing error: bad input, a bad parameter, a missing file.

    The message must name the file, the record (or key) and the problem; the CLI prints it without a traceback.
    """
