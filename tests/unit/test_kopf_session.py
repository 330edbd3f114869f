"""kopf's API session (aegis.k8s.client.bounded_session), against a real HTTP server on
127.0.0.1: it carries the credentials, bounds the requests waiting for a response, and never
lets a streaming watch hold one of those slots."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from aegis.k8s.client import bounded_session


class Server:
    """Answers /slow once released, streams /watch until the test ends."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.stop_streams = asyncio.Event()
        self.authorization: list[str | None] = []

    async def slow(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return web.json_response({"kind": "Status"})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"type":"ADDED"}\n')
        await self.stop_streams.wait()
        return response


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    app = web.Application()
    app.router.add_get("/slow", state.slow)
    app.router.add_get("/watch", state.watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        state.stop_streams.set()
        state.release.set()
        await runner.cleanup()


async def _wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_requests_wait_at_the_gate_and_watches_do_not_hold_a_slot() -> None:
    asyncio.run(_gated())


async def _gated() -> None:
    async with serving() as (state, url):
        await _gated_burst(state, url)


async def _gated_burst(state: Server, url: str) -> None:
    session = bounded_session({"Authorization": "Bearer t0ken"}, False, concurrency=2)
    try:
        # Three watches stream first: with the gate held while they stream, no request
        # could ever pass a gate of two.
        watches = [await session.get(f"{url}/watch") for _ in range(3)]
        for watch in watches:
            assert await watch.content.readline() == b'{"type":"ADDED"}\n'

        async def get() -> int:
            async with session.get(f"{url}/slow") as response:
                await response.read()
                return response.status

        requests = [asyncio.create_task(get()) for _ in range(10)]
        await _wait_until(lambda: state.in_flight == 2)
        await asyncio.sleep(0.2)  # time for more to arrive, were the gate open
        assert state.in_flight == 2
        state.release.set()
        assert await asyncio.gather(*requests) == [200] * 10
        assert state.most_in_flight == 2
        assert state.authorization == ["Bearer t0ken"] * 10
        for watch in watches:
            watch.close()
    finally:
        await session.close()


def test_without_a_gate_every_request_would_be_in_flight_at_once() -> None:
    """The control: the same burst through a plain session reaches the server all at once,
    so the bound above is the gate's doing."""
    asyncio.run(_ungated())


async def _ungated() -> None:
    async with serving() as (state, url):
        await _ungated_burst(state, url)


async def _ungated_burst(state: Server, url: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def get() -> int:
            async with session.get(f"{url}/slow") as response:
                return response.status

        requests = [asyncio.create_task(get()) for _ in range(10)]
        await _wait_until(lambda: state.in_flight == 10)
        state.release.set()
        assert await asyncio.gather(*requests) == [200] * 10
