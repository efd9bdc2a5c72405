"""Slow salted password hashes (scrypt, from the standard library).

The original stored passwords in plain text. Hashing costs ~50 ms of CPU on purpose, so callers
run it in a thread to keep the event loop free.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# OWASP's minimum for scrypt: N=2^17 would be stronger but costs 128 MiB per hash; 2^14 with r=8
# keeps a registration burst from exhausting a small container.
_N, _R, _P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=len(expected),
    )
    return hmac.compare_digest(actual, expected)
