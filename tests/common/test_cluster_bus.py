"""The bus on a real 3-node JetStream cluster: a member started while the cluster elects its
leaders waits for them; replicas never go down because one member was given fewer; a durable
consumer whose leader is killed goes on. A bad configuration fails, naming the problem: at
once, or after the start's wait when the server calls it "not yet"."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import pytest
from nats.errors import NoRespondersError
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError
from offsim_common import bus, subjects
from offsim_launcher import embedded
from pydantic import BaseModel

from tests.conftest import eventually

pytestmark = pytest.mark.slow

# The server's answer to a publish whose Nats-Msg-Id it is still storing.
DUPLICATE_IN_PROCESS = 10158


class Ping(BaseModel):
    n: int


@pytest.fixture
async def cluster(tmp_path):
    """Three fresh nodes, just started: no leader elected yet."""
    started = embedded.start_nats_cluster(tmp_path)
    try:
        yield started
    finally:
        started.stop()


async def connect(cluster: embedded.NatsCluster) -> nats.NATS:
    return await bus.connect(cluster.url, name="test")


async def test_streams_and_bucket_wait_for_a_new_cluster_and_have_three_replicas(cluster):
    nc = await connect(cluster)
    try:
        js = nc.jetstream()
        await asyncio.wait_for(bus.ensure_streams(js, replicas=3), 60)
        for config in bus.stream_configs(3):
            info = await js.stream_info(config.name)
            assert info.config.num_replicas == 3
            assert info.cluster.leader
        bucket = await js.stream_info(f"KV_{subjects.FAULTS_BUCKET}")
        assert bucket.config.num_replicas == 3

        # A member given OFFSIM_STREAM_REPLICAS=1 leaves them at three.
        await bus.ensure_streams(js, replicas=1)
        for config in bus.stream_configs(1):
            assert (await js.stream_info(config.name)).config.num_replicas == 3
        bucket = await js.stream_info(f"KV_{subjects.FAULTS_BUCKET}")
        assert bucket.config.num_replicas == 3

        # More replicas than nodes: the server says "no peers yet", which a starting cluster
        # also says; past the wait, the member stops with the server's reason.
        with pytest.raises(BadRequestError) as refused:
            await asyncio.wait_for(bus.ensure_streams(js, replicas=5, wait_s=2), 30)
        assert refused.value.err_code == 10005
    finally:
        await nc.close()


async def test_a_consumer_goes_on_when_the_node_leading_it_is_killed(cluster):
    nc = await connect(cluster)
    seen: set[int] = set()

    async def handler(ping: Ping, _msg) -> None:
        seen.add(ping.n)

    async def handled(n: int) -> bool:
        return n in seen

    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, replicas=3)
        stream, subject = f"T{uuid.uuid4().hex[:8]}", f"test.{uuid.uuid4().hex[:8]}"
        await js.add_stream(name=stream, subjects=[subject], num_replicas=3)
        spec = bus.ConsumerSpec(stream=stream, durable="d", subject=subject, model=Ping,
                                handler=handler, fetch_timeout_s=0.5, fetch_retry_s=0.1,
                                ack_wait_s=2)  # fmt: skip
        tasks = await bus.start_consumers(js, [spec], replicas=3)

        async def publish(n: int) -> None:
            async def stored() -> bool:
                try:
                    await js.publish(subject, Ping(n=n).model_dump_json().encode(), timeout=1,
                                     headers={"Nats-Msg-Id": str(n)})  # fmt: skip
                    return True
                except (TimeoutError, NoStreamResponseError):  # no leader yet: send it again
                    return False
                except APIError as exc:
                    # A copy sent during the leader change is still being stored: send it again.
                    if exc.err_code == DUPLICATE_IN_PROCESS:
                        return False
                    raise

            await eventually(stored, within=30, interval=0.1)

        await publish(1)
        await eventually(lambda: handled(1), within=10)
        for n in (2, 3):  # twice: the leader, then the one elected after it
            leader = (await js.consumer_info(stream, "d")).cluster.leader
            cluster.kill(cluster.index_of(leader))
            await publish(n)
            await eventually(lambda n=n: handled(n), within=30)
            cluster.start(cluster.index_of(leader))
        assert not bus.stopped_consumers(tasks)
        await bus.stop_tasks(tasks)
    finally:
        await nc.close()


async def test_three_replicas_on_a_single_server_fail_at_once_naming_it(nats_url):
    nc = await nats.connect(nats_url)
    try:
        with pytest.raises(Exception, match=r"(?i)replicas"):
            await asyncio.wait_for(bus.ensure_streams(nc.jetstream(), replicas=3), 10)
    finally:
        await nc.close()


async def test_until_done_retries_what_passes_and_raises_what_does_not(monkeypatch):
    monkeypatch.setattr(bus, "RETRY_FIRST_S", 0.01)
    failures = [NoRespondersError(), NoStreamResponseError(), TimeoutError()]

    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert await bus.until_done("trying", flaky) == "done"
    assert not failures

    async def misconfigured() -> None:
        raise BadRequestError(code=400, err_code=10052, description="invalid config")

    with pytest.raises(BadRequestError):
        await bus.until_done("trying", misconfigured)


async def test_a_cancelled_wait_stops_at_once():
    async def never() -> None:
        raise NoRespondersError()

    waiting = asyncio.create_task(bus.until_done("waiting", never))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert waiting.cancelled()
