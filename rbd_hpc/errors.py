"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""
from pathlib import Path


class UserError(Exception):
    """Bad input: a value and what would be valid. Never shown with a traceback."""


class AgreedError(UserError):
    """A UserError that every rank raises at the same point (rank 0 found it and broadcast
    it): rank 0 alone reports it and every rank exits with code 2, no MPI_Abort needed."""


def choice_error(flag: str, value, valid) -> UserError:
    """The one wording for a value outside a set: the value and every valid one."""
    return UserError(f"{flag} {value!r} is not valid; choose one of: " + ", ".join(map(str, valid)))


def require_choice(flag: str, value, valid) -> None:
    if value not in valid:
        raise choice_error(flag, value, valid)


def make_directory(path, flag: str):
    """``path`` as a directory, created with its parents; the one wording when it cannot be
    (an empty name, a file in the way, no permission). Returns it as a Path."""
    if not str(path).strip():
        raise UserError(f"{flag} '' is empty; give a directory")
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {flag} {out}: {e.strerror or e}") from None
    return out


def require_positive(flag: str, value, allow_none: bool = False) -> None:
    """The one wording for a count or size that must be > 0 (``None`` passes if allowed)."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise UserError(f"{flag} {value} must be a positive number")
