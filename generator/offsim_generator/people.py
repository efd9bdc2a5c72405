"""Fake people and their devices, from a seeded Faker."""

from __future__ import annotations

from faker import Faker


def registration(faker: Faker, number: int, devices: int) -> dict:
    """A POST /api/register body as the original sent it: a person with `devices` devices.

    `number` is the household's in the run (from 1): part of the email, so two people of one
    run never share an address, whichever generator (shard) registers them; the random part
    keeps runs with other seeds apart where Faker repeats a name."""
    first, last = faker.first_name(), faker.last_name()
    tag = faker.random_int(0, 10**6 - 1)
    email = f"{first}.{last}.{number}.{tag}@{faker.free_email_domain()}".lower()
    return {
        "user": {
            "first_name": first,
            "last_name": last,
            "email": email.replace(" ", ""),
            "password": faker.password(length=12),
        },
        "devices": [{"mac_address": faker.mac_address()} for _ in range(devices)],
    }
