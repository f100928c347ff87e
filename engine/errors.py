"""Errors the user can fix. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input: a config, preset, dataset or argument. Message names the file/key/value."""

    exit_code = 2


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class StorageError(UserError):
    """A file could not be written or read back (disk full, read-only dir, a damaged checkpoint)."""


def one_line(e: BaseException) -> str:
    """An error's message as one line. A DataLoader worker re-raises an error with its whole traceback
    as the message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): its last
    line is the original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(e).__name__}: "
        text = last[len(prefix) :] if last.startswith(prefix) else last
    return " ".join(text.split())
