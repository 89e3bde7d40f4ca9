"""Password hashing with argon2id (RFC 9106) through argon2-cffi, and the password policy.

argon2-cffi's defaults follow RFC 9106's second recommended option (argon2id, t=3, m=64 MiB, p=4); a hash
made with older parameters is re-hashed on the next successful sign-in.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
# Verified when the user does not exist, so that a wrong username costs as much time as a wrong password.
_DUMMY = _hasher.hash("telerad-no-such-user")


class PasswordPolicyError(ValueError):
    pass


def check_policy(password: str, min_length: int, username: str = "") -> None:
    """NIST SP 800-63B 5.1.1.2: a minimum length, no composition rules, not the username."""
    if len(password) < min_length:
        raise PasswordPolicyError(f"password too short: at least {min_length} characters")
    if len(password) > 1024:
        raise PasswordPolicyError("password too long: at most 1024 characters")
    if username and password.strip().lower() == username.strip().lower():
        raise PasswordPolicyError("password must not be the username")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (``None``: the account has no password, or no account)."""
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)
