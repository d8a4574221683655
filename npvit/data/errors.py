"""The one exception the data layer raises for problems a user can fix."""

from __future__ import annotations


class DataError(Exception):
    """An expected data problem: a missing or corrupt archive, no network, a folder in the wrong layout.

    Its message says what is wrong, where the loader looked, and what to do about it, so a command-line
    program can print it as it is, without a traceback. Programming errors (an unknown dataset name, a bad
    argument) stay ``ValueError``.
    """
