"""Fake people and their devices, from a seeded Faker."""

from __future__ import annotations

import random

from faker import Faker


def registration(faker: Faker, rng: random.Random) -> dict:
    """A POST /api/register body as the original sent it: a person with one or two devices."""
    first, last = faker.first_name(), faker.last_name()
    # A number keeps addresses apart where Faker repeats a name; the seeded rng keeps it repeatable.
    email = f"{first}.{last}.{rng.randrange(10**6)}@{faker.free_email_domain()}".lower()
    return {
        "user": {
            "first_name": first,
            "last_name": last,
            "email": email.replace(" ", ""),
            "password": faker.password(length=12),
        },
        "devices": [{"mac_address": faker.mac_address()} for _ in range(rng.randint(1, 2))],
    }
