"""JetStream on one node against a 3-node cluster: what replication and fsync cost.

Four shapes, each started fresh: one node with its stream at 1 replica (`offsim up`), with the
server's default sync (every 2 minutes) and with `sync_interval: always`; three clustered nodes
with the stream at 3 replicas, with each sync (offsim's cluster runs `always`: docs/jetstream.md).
For each: messages of an order event's size published pipelined (a window of acks in flight,
as the services' `publish_many` and the generator do) for the throughput, then one at a time
for the latency of an acknowledged write. Run with `make bench`; numbers go to
docs/benchmarks.md and docs/capacity.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.js import api
from offsim_launcher import embedded

SUBJECT = "bench.events"
PAYLOAD = b'{"id": 123456789, "ssd_id": 4242, "barcode": "3017620422003", "quantity": 3, ' \
    b'"status": "pending", "timestamp": "2026-12-03T18:00:00.000000+00:00"}'  # fmt: skip
WINDOW = 1000


async def measure(url: str, replicas: int, messages: int, sequential: int) -> dict[str, float]:
    nc = await nats.connect(url.split(","))
    js = nc.jetstream()
    try:
        config = api.StreamConfig(name="BENCH", subjects=[SUBJECT], num_replicas=replicas,
                                  storage=api.StorageType.FILE, duplicate_window=120)  # fmt: skip
        for _ in range(100):  # a fresh cluster elects its meta leader first
            try:
                await js.add_stream(config)
                break
            except Exception:
                await asyncio.sleep(0.2)
        started = time.perf_counter()
        in_flight: list[asyncio.Future] = []
        for n in range(messages):
            in_flight.append(await js.publish_async(SUBJECT, PAYLOAD,
                                                    headers={"Nats-Msg-Id": f"m{n}"}))  # fmt: skip
            if len(in_flight) >= WINDOW:
                await asyncio.gather(*in_flight)
                in_flight.clear()
        await asyncio.gather(*in_flight)
        rate = messages / (time.perf_counter() - started)
        latencies = []
        for n in range(sequential):
            began = time.perf_counter()
            await js.publish(SUBJECT, PAYLOAD, headers={"Nats-Msg-Id": f"s{n}"})
            latencies.append((time.perf_counter() - began) * 1000)
        latencies.sort()
        return {"rate": rate, "p50": statistics.median(latencies),
                "p99": latencies[int(len(latencies) * 0.99) - 1]}  # fmt: skip
    finally:
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--sequential", type=int, default=2_000)
    args = parser.parse_args()
    rows = []
    for label, size, sync in (("1 node, 1 replica, default sync", 1, None),
                              ("1 node, 1 replica, sync always", 1, "always"),
                              ("3 nodes, 3 replicas, default sync", 3, None),
                              ("3 nodes, 3 replicas, sync always", 3, "always")):  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="offsim-bench-") as tmp:
            if size == 1:
                node = embedded.NatsNode("bench", Path(tmp), embedded.free_port(),
                                         embedded.free_port(), sync_interval=sync)  # fmt: skip
                server = node.start()
                url, stop = server.url, server.stop
            else:
                cluster = embedded.start_nats_cluster(Path(tmp), size, sync_interval=sync)
                url, stop = cluster.url, cluster.stop
            try:
                found = await measure(url, size, args.messages, args.sequential)
            finally:
                stop()
        rows.append((label, found))
        print(
            f"{label}: {found['rate']:,.0f} msg/s pipelined; one at a time "
            f"p50 {found['p50']:.2f} ms, p99 {found['p99']:.2f} ms",
            flush=True,
        )
    print("\n| shape | pipelined msg/s | one at a time p50 | p99 |\n|---|---:|---:|---:|")
    for label, found in rows:
        print(f"| {label} | {found['rate']:,.0f} | {found['p50']:.2f} ms | {found['p99']:.2f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
