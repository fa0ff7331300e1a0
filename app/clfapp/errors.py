"""Errors a user can fix: the CLI prints their message as one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (recipe, option, path, data). Exit code 2."""

    exit_code = 2
