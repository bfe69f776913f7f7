"""`run_side_by_side` against two real servers on sockets: the targets take turns, each is measured
only in its own slices, and each result counts what its own target answered."""

from __future__ import annotations

import time

from aiohttp import web

from tests.load.loadtest import LoadConfig, run_side_by_side


async def _serve(status: int, log: list[tuple[str, float]], name: str) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        log.append((name, time.perf_counter()))
        return web.json_response({"code": "refused"} if status != 200 else {"ok": True}, status=status)

    app = web.Application()
    async def live(_: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/health/live", live)
    app.router.add_post("/load", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_targets_take_turns_and_each_counts_its_own_answers():
    log: list[tuple[str, float]] = []
    good, good_url = await _serve(200, log, "good")
    bad, bad_url = await _serve(503, log, "bad")
    try:
        cfg = LoadConfig(url=good_url, path="/load", duration=1.5, warmup=0.2, concurrency=4, seed=False,
                         jwt_secret="side-by-side-test-secret-long-enough-for-hs256", barbers=3)
        started = time.perf_counter()
        first, second = await run_side_by_side([cfg, LoadConfig(**{**cfg.__dict__, "url": bad_url})], rounds=3)
        elapsed = time.perf_counter() - started
    finally:
        await good.cleanup()
        await bad.cleanup()
    assert first["slices"] == second["slices"] == 3
    assert first["summary"]["successes"] > 0 and first["summary"]["errors"] == 0
    assert second["summary"]["successes"] == 0 and set(second["summary"]["errors_by_kind"]) == {"503 refused"}
    # Measured time is each target's own slices (1.5 s apiece), not the whole run's wall clock.
    assert first["summary"]["duration_s"] == second["summary"]["duration_s"] == 1.5
    assert elapsed >= 2 * (0.2 + 1.5)
    # Taking turns: the log switches target at least 2 * rounds - 1 times (a, b, a, b, a, b).
    switches = sum(1 for (a, _), (b, _) in zip(log, log[1:]) if a != b)
    assert switches >= 5, switches
