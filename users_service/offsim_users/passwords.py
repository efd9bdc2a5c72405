"""Slow salted password hashes (scrypt, from the standard library).

The original stored passwords in plain text. Hashing costs ~50 ms of CPU on purpose, so callers
run it in a thread to keep the event loop free.

Every hash carries its parameters (`scrypt$N$r$p$salt$digest`) and verification reads them, so
hashes of different costs live side by side: `POST /api/register` always hashes at FULL_COST;
only the bulk registration of synthetic users (the generator's starting population) uses
SYNTHETIC_COST, and its hashes say so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# OWASP's minimum for scrypt: N=2^17 would be stronger but costs 128 MiB per hash; 2^14 with r=8
# keeps a registration burst from exhausting a small container.
FULL_COST = (2**14, 8, 1)
# Synthetic users only (their passwords are random and never typed): 64 times cheaper, so ten
# thousand of them hash in seconds, not minutes.
SYNTHETIC_COST = (2**8, 8, 1)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, cost: tuple[int, int, int] = FULL_COST) -> str:
    n, r, p = cost
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def hash_cost(stored: str) -> tuple[int, int, int]:
    """The (N, r, p) a stored hash was made with."""
    _, n, r, p, _, _ = stored.split("$")
    return int(n), int(r), int(p)


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
