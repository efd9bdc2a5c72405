"""Shards: N generators play one city together, each its share of the households.

A household is one simulated person with their one or two SSDs. Households are numbered from 0
in the order they join: the starting population's first, then each registration as it happens.
Shard I of N (0-based, as a StatefulSet's pod ordinals: 0/3, 1/3, 2/3) plays the households
whose number is I modulo N: interleaved rather than in ranges, so that the registrations of a
run, which only ever add numbers at the end, are split evenly too.

`auto/N` takes I from the trailing `-<ordinal>` of the host name (a StatefulSet's pod
`generator-2` is shard 2), so every replica of one manifest finds its own shard.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

_FORM = re.compile(r"\s*(\d+|auto)\s*/\s*(\d+)\s*")
_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Which share of the households a generator plays: those numbered `index` modulo
    `count`. The default, 0/1, is the whole city."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("I/N: N must be at least 1")
        if not 0 <= self.index < self.count:
            raise ValueError("I/N: I must be below N (shards are numbered from 0: 0/3, 1/3, 2/3)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def leads(self) -> bool:
        """Whether this shard publishes the run-wide state (the faults in NATS KV): one of the
        shards must, and only one, or they would undo each other's puts."""
        return self.index == 0

    def owns(self, household: int) -> bool:
        return household % self.count == self.index

    @classmethod
    def parse(cls, text: str, hostname: str | None = None) -> Shard:
        """`I/N`, or `auto/N` with I from `hostname` (the host's own by default). A
        ValueError says what is wrong."""
        match = _FORM.fullmatch(text)
        if match is None:
            raise ValueError("must be I/N (0-based: 0/3, 1/3, 2/3) or auto/N")
        index, count = match[1], int(match[2])
        if index != "auto" or count < 1:
            return cls(0 if index == "auto" else int(index), count)
        host = hostname if hostname is not None else host_name()
        ordinal = _ORDINAL.search(host)
        if ordinal is None:
            raise ValueError(
                f"auto/N takes I from the host name's trailing -<ordinal> (a StatefulSet pod's "
                f"name, such as generator-2), but the host name is {host!r}"
            )
        if int(ordinal[1]) >= count:
            raise ValueError(
                f"auto/N: the host {host!r} is ordinal {ordinal[1]}, not below N={count} (more "
                "replicas than shards?)"
            )
        return cls(int(ordinal[1]), count)


def host_name() -> str:
    """The pod's name in Kubernetes: HOSTNAME, or the kernel's host name without it."""
    return os.environ.get("HOSTNAME") or socket.gethostname()
