"""Errors the user can fix. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input: a config, preset, dataset or argument. Message names the file/key/value."""

    exit_code = 2


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass
