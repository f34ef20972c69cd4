"""The one exception type for bad user input (configs, data, checkpoints).

Entry points catch :class:`SegKDError`, print its message on one line and exit with status 2, so a
researcher sees ``error: <file or key>: <what is wrong>`` instead of a traceback.
"""


class SegKDError(Exception):
    """Bad input that the user can fix. The message names the file, key or value at fault."""
