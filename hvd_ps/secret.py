"""A tier's secret: random bytes in a file only its owner may read.

``hvdps-run`` makes one per tier (:func:`create`, in a directory of its own that it removes at
its end) or takes the file ``--secret-file`` names, and hands the file's path to every process
it starts (``HVD_PS_SECRET_FILE``: a path in the environment, never the secret on a command
line). A job that joins a ``--servers-only`` tier names the same file. hvd_ps's own endpoints
(the launcher's rendezvous, the roster) admit only peers that prove they hold it
(:mod:`hvd_ps.authentication`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from typing import Optional

from .errors import ConfigError

#: random bytes in a secret hvd_ps makes (written as hex)
SIZE = 32
#: a secret file's shortest and longest contents, surrounding whitespace left out
MIN_BYTES, MAX_BYTES = 16, 4096
NAME = "secret"


class SecretError(ConfigError):
    """A secret file that cannot be used: missing, readable by others, too short or too long."""


def create(directory: str) -> str:
    """A new secret in ``directory``/secret (mode 0600, never an existing file); its path."""
    path = os.path.join(directory, NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(SIZE) + "\n")
    return path


def load(path: str, what: str = "HVD_PS_SECRET_FILE") -> bytes:
    """The secret in ``path``, which ``what`` (the variable or flag) named. Refuses a file that
    is not a regular file, that its group or others may read or write, or whose contents
    (whitespace around them left out) are shorter than :data:`MIN_BYTES` or longer than
    :data:`MAX_BYTES`."""
    where = f"{what}={path}"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"{where} is not a regular file: name the tier's secret file")
        if st.st_mode & 0o077:
            raise SecretError(
                f"{where} may be read or written by others (mode {stat.S_IMODE(st.st_mode):o}): "
                f"chmod 600 {path}"
            )
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 2).strip()  # (a trailing newline is not the secret)
    except OSError as err:
        raise SecretError(f"{where} cannot be read: {err.strerror}") from None
    if not MIN_BYTES <= len(data) <= MAX_BYTES:
        raise SecretError(
            f"{where} holds {len(data)} bytes, a secret needs {MIN_BYTES} to {MAX_BYTES}: make "
            f'one with \'head -c {SIZE} /dev/urandom | od -An -tx1 | tr -d " \\n" > {path}; '
            f"chmod 600 {path}'"
        )
    return data


class Held:
    """The secret of a tier ``hvdps-run`` starts: the file ``--secret-file`` named (``path``),
    or a new one in a directory of its own that :meth:`remove` deletes."""

    def __init__(self, path: Optional[str]) -> None:
        self.made: Optional[str] = None
        if path is None:
            self.made = tempfile.mkdtemp(prefix="hvdps-secret-")
            path = create(self.made)
        self.path = os.path.abspath(path)
        self.key = load(self.path, "--secret-file")

    def remove(self) -> None:
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)
            self.made = None
