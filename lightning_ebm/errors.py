"""The one exception type that the command line prints as a short message, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad argument, missing data, ...).

    The message must name the problem and the fix. ``python -m lightning_ebm`` prints it on one
    line prefixed with ``error:`` and exits with status 2.

    Args:
        every_process: raised by every process of a distributed run at once (a check of state they
            share), so that only the first process prints it.
    """

    def __init__(self, *args: object, every_process: bool = False) -> None:
        super().__init__(*args)
        self.every_process = every_process
