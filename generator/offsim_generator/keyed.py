"""Draws keyed by what they are for, not by when they are made.

A household's decisions come from numbers that depend only on the run's key (from the seed),
what the number is for, and the household's own number: never on the draws made for another
household before it. So any generator computes the same decisions for a household, whichever
others it plays (docs/generator.md, "Shards"), and one household's draws do not shift when
another's change.

The numbers are splitmix64's: a 64-bit counter mixed into 64 well-spread bits, in pure Python
at about half a microsecond a draw.
"""

from __future__ import annotations

import hashlib
import random
from enum import IntEnum

MASK = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15


class For(IntEnum):
    """What a keyed draw is for: the same numbers never serve two purposes."""

    DEVICES = 1  # how many SSDs a household has
    HOUSEHOLD = 2  # its products and their consumption rates
    PERSON = 3  # the person who registers (Faker's seed)
    CONSUME = 4  # its stream of consumptions
    MALFORMED_REGISTER = 5
    MALFORMED_ORDER = 6
    CAPACITY = 7  # a dry run's stock: a product's capacity
    DELAY = 8  # a dry run's stock: an order's supplier and courier delays
    SLOT = 9  # within a consumption's draw: which product
    FAULT = 10  # within a consumption's draw: malformed or not
    REJECT = 11  # a dry run's order: rejected by the supplier or not (the reject fault)
    SPIKE = 12  # a dry run's order: delayed by the courier's spike or not


def mix(x: int) -> int:
    """splitmix64's finalizer: 64 bits in, 64 evenly spread bits out."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def run_key(seed: int | None) -> int:
    """The run's key: from the seed, or random without one."""
    if seed is None:
        return random.getrandbits(64)
    return int.from_bytes(hashlib.blake2b(f"offsim:{seed}".encode(), digest_size=8).digest())


def key(base: int, purpose: For, *numbers: int) -> int:
    """The key of one purpose for the given numbers (a household's, a slot's, an order's)."""
    x = mix((base + purpose * GOLDEN) & MASK)
    for number in numbers:
        x = mix((x + (number & MASK) * GOLDEN + GOLDEN) & MASK)
    return x


def nth(stream: int, n: int) -> int:
    """The n-th number (from 0) of the stream whose key is `stream`."""
    return mix((stream + (n + 1) * GOLDEN) & MASK)


def within(bits: int, purpose: For) -> int:
    """Other bits from the same draw, for another of its purposes."""
    return mix((bits + purpose * GOLDEN) & MASK)


def unit(bits: int) -> float:
    """A float in [0, 1) from 64 bits (their top 53)."""
    return (bits >> 11) * 2.0**-53
