"""The processor-neutral simulator parts (sandbox/common.py): fault switches, idempotency
records, webhook delivery, the /_sim controls and the runners. A tiny "shop" simulator built
the way the Square and PayPal ones will be (its key in the JSON body, its own signer and error
shape) drives them over real HTTP; the webhook receiver is a real local aiohttp server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sandbox.common import (
    STATE,
    Fault,
    IdempotencyStore,
    SimState,
    Webhook,
    WebhookDeliverer,
    body_key,
    header_key,
    sim_app,
    start_sim,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "shop-secret"


def shop_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def dummy_signer(webhook: Webhook) -> dict[str, str]:
    return {"X-Shop-Signature": shop_signature(webhook.secret, webhook.body)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a webhook receiver ----------------------------------------------------------------------


class Receiver:
    """Records every POST (failed ones too) with its arrival time; answers 500 `fail_first`
    times."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, str], int]] = []  # body, headers, answer
        self.arrived: list[float] = []
        self.fail_first = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 200
        if self.fail_first > 0:
            self.fail_first -= 1
            status = 500
        self.requests.append((body, dict(request.headers), status))
        self.arrived.append(time.monotonic())
        return web.Response(status=status)

    def accepted(self) -> list[bytes]:
        return [body for body, _, status in self.requests if status == 200]

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count:
            assert time.monotonic() < deadline, f"only {len(self.accepted())} of {count} arrived"
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def deliverer():
    d = WebhookDeliverer(dummy_signer, retry_delays=(0.01, 0.01, 0.01))
    yield d
    await d.close()


def webhook(url: str, n: int = 1, **extra) -> Webhook:
    body = json.dumps({"id": f"ev{n}", "n": n}).encode()
    return Webhook(f"ev{n}", "thing.happened", url, body, secret=SECRET, endpoint_id="ep1",
                   **extra)


# --- a tiny simulator on sandbox.common ------------------------------------------------------


class ShopState(SimState):
    api_prefixes = ("/api/",)

    def reset(self) -> None:
        super().reset()
        self.orders: list[dict] = []
        self.hooks: list[str] = []
        self.idempotency = IdempotencyStore(body_key("idempotency_key"))

    def sign_webhook(self, webhook: Webhook) -> dict[str, str]:
        return dummy_signer(webhook)

    def snapshot(self) -> dict:
        return {"orders": self.orders, "idempotency_keys": list(self.idempotency)}


async def create_order(request: web.Request) -> web.Response:
    state: ShopState = request.app[STATE]
    body = await request.json()

    async def run() -> tuple[web.Response, bool]:
        if "item" not in body:  # validation: not saved, so a corrected retry runs
            return web.json_response({"error": "item missing"}, status=400), False
        order = {"id": f"o{len(state.orders) + 1}", "item": body["item"]}
        state.orders.append(order)
        for url in state.hooks:
            state.webhooks.send(Webhook(f"ev_{order['id']}", "order.created", url,
                                        json.dumps(order).encode(), secret=SECRET))
        return web.json_response(order, status=201), True

    return await state.idempotency.run(
        state.idempotency.key_of(request, body), body, "req1", run,
        reject=lambda claim: web.json_response({"error": claim.outcome}, status=409),
        replay_headers=lambda record: {"X-Replayed": record.request_id})


def shop_error(request: web.Request, status: int) -> web.Response:
    return web.json_response({"shop_error": "down"}, status=status)


def create_shop_app() -> web.Application:
    app = sim_app(ShopState(), error_response=shop_error)
    app.router.add_post("/api/orders", create_order)
    return app


@pytest.fixture
async def shop():
    running = await start_sim(create_shop_app)
    yield running
    await running.close()


@pytest.fixture
async def http(shop):
    async with aiohttp.ClientSession(base_url=shop.url) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, body=None,
               **kwargs) -> tuple[int, dict]:
    async with http.request(method, path, json=body, **kwargs) as resp:
        return resp.status, await resp.json()


# --- faults ----------------------------------------------------------------------------------


def test_fault_from_json_defaults_and_validation():
    assert Fault.from_json({"mode": "timeout"}).delay_ms == 30_000
    assert Fault.from_json({"mode": "slow"}).delay_ms == 1_000
    assert Fault.from_json({"mode": "disconnect"}) == Fault("disconnect")
    assert Fault.from_json({"mode": "error", "status": 503, "count": 2}).status == 503
    for bad in ({"mode": "explode"}, {"mode": "error", "count": 0},
                {"mode": "error", "count": True}, {"mode": "error", "status": 404},
                {"mode": "slow", "delay_ms": -5}, {"mode": "error", "path_prefix": "v1"},
                {"mode": "error", "typo": 1}):
        with pytest.raises(ValueError):
            Fault.from_json(bad)


def test_take_fault_counts_down_and_respects_prefixes():
    state = ShopState()
    state.fault = Fault("error", count=2)
    assert state.take_fault("/other") is None  # not an API path of this simulator
    assert state.take_fault("/_sim/state") is None
    assert state.fault.count == 2  # untouched requests do not count
    assert state.take_fault("/api/orders").mode == "error"
    assert state.take_fault("/api/orders").mode == "error"
    assert state.take_fault("/api/orders") is None and state.fault == Fault()

    state.fault = Fault("slow", path_prefix="/api/refunds")
    assert state.take_fault("/api/orders") is None
    assert state.take_fault("/api/refunds/1").mode == "slow"
    state.fault = Fault("error", path_prefix="/")
    assert state.take_fault("/_sim/faults") is None  # the controls always answer


async def test_error_fault_answers_in_the_simulators_shape_and_records_nothing(shop, http):
    await call(http, "POST", "/_sim/faults", {"mode": "error", "status": 503, "count": 1})
    status, body = await call(http, "POST", "/api/orders", {"item": "comb",
                                                            "idempotency_key": "k1"})
    assert status == 503 and body == {"shop_error": "down"}
    assert shop.state.orders == [] and "k1" not in shop.state.idempotency
    status, body = await call(http, "POST", "/api/orders", {"item": "comb",
                                                            "idempotency_key": "k1"})
    assert status == 201 and len(shop.state.orders) == 1


async def test_disconnect_fault_runs_the_request_then_drops_the_connection(shop, http):
    await call(http, "POST", "/_sim/faults", {"mode": "disconnect", "count": 1})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, "POST", "/api/orders", {"item": "razor", "idempotency_key": "k2"})
    assert shop.state.orders == [{"id": "o1", "item": "razor"}]
    status, again = await call(http, "POST", "/api/orders", {"item": "razor",
                                                             "idempotency_key": "k2"})
    assert status == 201 and again["id"] == "o1" and len(shop.state.orders) == 1


async def test_timeout_fault_runs_the_request_and_answers_late(shop, http):
    await call(http, "POST", "/_sim/faults", {"mode": "timeout", "delay_ms": 60_000, "count": 1})
    with pytest.raises(TimeoutError):
        await call(http, "POST", "/api/orders", {"item": "brush"},
                   timeout=aiohttp.ClientTimeout(total=0.3))
    assert shop.state.orders == [{"id": "o1", "item": "brush"}]


async def test_slow_fault_delays_before_running(shop, http):
    await call(http, "POST", "/_sim/faults", {"mode": "slow", "delay_ms": 300, "count": 1})
    started = time.monotonic()
    status, _ = await call(http, "POST", "/api/orders", {"item": "gel"})
    assert status == 201 and time.monotonic() - started >= 0.3  # lower bound only


async def test_close_wakes_a_sleeping_fault(shop, http):
    await call(http, "POST", "/_sim/faults", {"mode": "timeout", "delay_ms": 600_000})
    pending = asyncio.create_task(call(http, "POST", "/api/orders", {"item": "wax"}))
    while not shop.state.orders:  # the request ran and now sleeps in the fault
        await asyncio.sleep(0.01)
    await asyncio.wait_for(shop.close(), 10)
    # Woken, the request finishes and is answered; one cancelled by aiohttp's shutdown timeout
    # would just lose its connection.
    status, order = await pending
    assert status == 201 and order == {"id": "o1", "item": "wax"}


# --- idempotency -----------------------------------------------------------------------------


def test_idempotency_store_claims():
    store = IdempotencyStore(header_key("Idempotency-Key"))
    first = store.claim("k", {"a": 1}, "req_1")
    assert first.outcome == "new"
    assert store.claim("k", {"a": 1}, "req_2").outcome == "in_progress"
    assert store.claim("k", {"a": 2}, "req_2").outcome == "mismatch"
    store.finish("k", web.json_response({"ok": True}, status=201))
    replay = store.claim("k", {"a": 1}, "req_3")
    assert replay.outcome == "replay" and replay.record.request_id == "req_1"
    answer = replay.record.replay({"X-Replayed": "yes"})
    assert answer.status == 201 and json.loads(answer.body) == {"ok": True}
    assert answer.headers["X-Replayed"] == "yes" and answer.content_type == "application/json"
    store.release("k")
    assert "k" not in store and store.claim("k", {"a": 2}, "req_4").outcome == "new"


async def test_idempotency_run_saves_replays_and_frees_unsaved_keys():
    store = IdempotencyStore(body_key("idempotency_key"))
    runs: list[int] = []

    async def ok() -> tuple[web.Response, bool]:
        runs.append(1)
        return web.json_response({"n": len(runs)}), True

    async def invalid() -> tuple[web.Response, bool]:
        runs.append(1)
        return web.json_response({"error": "bad"}, status=400), False

    def reject(claim):
        return web.json_response({"rejected": claim.outcome}, status=409)

    first = await store.run("k", "fp", "r1", ok, reject=reject)
    again = await store.run("k", "fp", "r2", ok, reject=reject)
    assert json.loads(again.body) == json.loads(first.body) == {"n": 1} and len(runs) == 1
    other = await store.run("k", "other", "r3", ok, reject=reject)
    assert other.status == 409 and json.loads(other.body) == {"rejected": "mismatch"}

    assert (await store.run("v", "fp", "r4", invalid, reject=reject)).status == 400
    assert "v" not in store
    assert json.loads((await store.run("v", "fp", "r5", ok, reject=reject)).body) == {"n": 3}

    await store.run(None, "fp", "r6", ok, reject=reject)
    await store.run(None, "fp", "r7", ok, reject=reject)
    assert len(runs) == 5  # no key: every request runs

    async def broken() -> tuple[web.Response, bool]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.run("x", "fp", "r8", broken, reject=reject)
    assert "x" not in store  # never left "in progress"


async def test_idempotency_run_rejects_a_key_whose_first_request_is_still_running():
    store = IdempotencyStore(header_key("PayPal-Request-Id"))
    release = asyncio.Event()

    async def slow() -> tuple[web.Response, bool]:
        await release.wait()
        return web.json_response({"done": True}), True

    def reject(claim):
        return web.json_response({"rejected": claim.outcome}, status=409)

    first = asyncio.create_task(store.run("k", "fp", "r1", slow, reject=reject))
    await asyncio.sleep(0)
    second = await store.run("k", "fp", "r2", slow, reject=reject)
    assert json.loads(second.body) == {"rejected": "in_progress"}
    release.set()
    assert (await first).status == 200


async def test_key_sources_read_the_header_or_the_body():
    captured: list[tuple[str | None, str | None, str | None]] = []

    async def peek(request: web.Request) -> web.Response:
        body = await request.json()
        captured.append((header_key("PayPal-Request-Id")(request, body),
                         header_key("Idempotency-Key", methods=("POST",))(request, body),
                         body_key("idempotency_key")(request, body)))
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/peek", peek)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/peek"
    try:
        async with aiohttp.ClientSession() as session:
            for method, body, headers in [
                    ("POST", {"idempotency_key": "sq1"}, {"PayPal-Request-Id": "pp1"}),
                    ("POST", {"idempotency_key": 7}, {"Idempotency-Key": "st1"}),
                    ("PUT", {}, {"Idempotency-Key": "st2"})]:
                async with session.request(method, url, json=body, headers=headers) as resp:
                    assert resp.status == 200
    finally:
        await runner.cleanup()
    assert captured == [("pp1", None, "sq1"), (None, "st1", None), (None, None, None)]


async def test_idempotent_orders_over_http(shop, http):
    status, order = await call(http, "POST", "/api/orders", {"item": "comb",
                                                             "idempotency_key": "a"})
    async with http.post("/api/orders", json={"item": "comb", "idempotency_key": "a"}) as resp:
        assert resp.status == 201 and resp.headers["X-Replayed"] == "req1"
        assert await resp.json() == order
    status, body = await call(http, "POST", "/api/orders", {"item": "gel", "idempotency_key": "a"})
    assert status == 409 and body == {"error": "mismatch"}
    status, _ = await call(http, "POST", "/api/orders", {"idempotency_key": "b"})
    assert status == 400
    status, _ = await call(http, "POST", "/api/orders", {"item": "gel", "idempotency_key": "b"})
    assert status == 201 and [o["item"] for o in shop.state.orders] == ["comb", "gel"]


# --- webhook delivery ------------------------------------------------------------------------


async def test_deliverer_retries_until_2xx_and_signs_every_attempt(deliverer, receiver):
    receiver.fail_first = 2
    deliverer.send(webhook(receiver.url))
    await deliverer.idle()
    assert [(d["attempt"], d["status"]) for d in deliverer.deliveries] == [
        (1, 500), (2, 500), (3, 200)]
    assert all(d["event_id"] == "ev1" and d["endpoint"] == "ep1" for d in deliverer.deliveries)
    for body, headers, _ in receiver.requests:
        assert headers["X-Shop-Signature"] == shop_signature(SECRET, body)
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == {"id": "ev1", "n": 1}


async def test_deliverer_retries_connection_errors_then_gives_up(deliverer):
    deliverer.send(webhook(f"http://127.0.0.1:{free_port()}/nobody-listens"))
    await deliverer.idle()
    assert [d["attempt"] for d in deliverer.deliveries] == [1, 2, 3, 4]
    assert all(d["status"] is None and d["error"] for d in deliverer.deliveries)


async def test_deliverer_stops_when_the_webhook_is_no_longer_wanted(deliverer, receiver):
    receiver.fail_first = 99
    deliverer.send(webhook(receiver.url, wanted=lambda: not receiver.requests))
    await deliverer.idle()
    assert len(deliverer.deliveries) == 1 and len(receiver.requests) == 1


async def test_deliverer_duplicates_each_webhook(deliverer, receiver):
    deliverer.duplicate = True
    deliverer.send(webhook(receiver.url))
    deliverer.duplicate = False  # the switch counts as it was when the event happened
    await deliverer.idle()
    assert [(d["copy"], d["status"]) for d in deliverer.deliveries] == [(1, 200), (2, 200)]
    assert receiver.accepted() == [webhook(receiver.url).body] * 2


async def test_deliverer_delay_holds_the_first_attempt_back(deliverer, receiver):
    deliverer.delay_ms = 300
    started = time.monotonic()
    deliverer.send(webhook(receiver.url))
    await deliverer.idle()
    assert receiver.arrived[0] - started >= 0.3  # lower bound only


async def test_deliverer_reorder_holds_and_flush_releases_newest_first(deliverer, receiver):
    deliverer.reorder = True
    for n in (1, 2, 3):
        deliverer.send(webhook(receiver.url, n))
    await deliverer.idle()
    assert receiver.requests == [] and deliverer.settings()["held"] == ["ev1", "ev2", "ev3"]
    assert deliverer.flush() == 3 and deliverer.flush() == 0
    await deliverer.idle()
    assert [json.loads(b)["n"] for b in receiver.accepted()] == [3, 2, 1]

    deliverer.batch = 2
    for n in (4, 5, 6):
        deliverer.send(webhook(receiver.url, n))
    await deliverer.idle()
    assert [json.loads(b)["n"] for b in receiver.accepted()][3:] == [5, 4]
    assert deliverer.settings()["held"] == ["ev6"]


async def test_deliverer_reset_and_close_end_waiting_deliveries(receiver):
    d = WebhookDeliverer(dummy_signer)
    d.delay_ms = 600_000
    d.duplicate, d.reorder = True, False
    d.send(webhook(receiver.url, 1))
    d.reset()
    await d.idle()
    assert d.settings() == {"duplicate": False, "delay_ms": 0, "reorder": False, "batch": None,
                            "held": []}
    d.delay_ms = 600_000
    d.send(webhook(receiver.url, 2))
    await asyncio.wait_for(d.close(), 10)  # ten minutes of delay against a ten-second guard
    assert receiver.requests == [] and d.deliveries == []


# --- /_sim controls --------------------------------------------------------------------------


async def test_sim_controls_validate_and_answer_settings(shop, http):
    for path, body in [("/_sim/faults", {"mode": "explode"}), ("/_sim/faults", [1]),
                       ("/_sim/webhooks/duplicate", {"enabled": "yes"}),
                       ("/_sim/webhooks/delay", {"ms": -1}), ("/_sim/webhooks/delay", {}),
                       ("/_sim/webhooks/reorder", {"enabled": True, "batch": 0})]:
        status, answer = await call(http, "POST", path, body)
        assert status == 400 and answer["error"], path
    async with http.post("/_sim/faults", data=b"{not json") as resp:
        assert resp.status == 400

    status, fault = await call(http, "POST", "/_sim/faults", {"mode": "slow", "count": 3})
    assert status == 200 and fault["delay_ms"] == 1000 and fault["count"] == 3
    assert (await call(http, "GET", "/_sim/faults"))[1] == fault
    assert (await call(http, "POST", "/_sim/webhooks/duplicate", {"enabled": True}))[1][
        "duplicate"] is True
    assert (await call(http, "POST", "/_sim/webhooks/delay", {"ms": 250}))[1]["delay_ms"] == 250
    status, reorder = await call(http, "POST", "/_sim/webhooks/reorder",
                                 {"enabled": True, "batch": 3})
    assert (reorder["reorder"], reorder["batch"], reorder["released"]) == (True, 3, 0)
    assert (await call(http, "GET", "/_sim/webhooks"))[1] == {
        "duplicate": True, "delay_ms": 250, "reorder": True, "batch": 3, "held": []}


async def test_sim_state_deliveries_flush_and_reset(shop, http, receiver):
    shop.state.hooks.append(receiver.url)
    await call(http, "POST", "/_sim/webhooks/reorder", {"enabled": True})
    for item in ("comb", "gel"):
        await call(http, "POST", "/api/orders", {"item": item, "idempotency_key": item})
    state = (await call(http, "GET", "/_sim/state"))[1]
    assert [o["item"] for o in state["orders"]] == ["comb", "gel"]
    assert state["webhooks"]["held"] == ["ev_o1", "ev_o2"] and state["faults"]["mode"] == "none"

    assert (await call(http, "POST", "/_sim/webhooks/flush"))[1] == {"released": 2}
    await receiver.wait_for(2)
    assert [json.loads(b)["id"] for b in receiver.accepted()] == ["o2", "o1"]
    await shop.state.webhooks.idle()
    deliveries = (await call(http, "GET", "/_sim/deliveries"))[1]["data"]
    assert [(d["event_id"], d["type"], d["status"]) for d in deliveries] == [
        ("ev_o2", "order.created", 200), ("ev_o1", "order.created", 200)]

    await call(http, "POST", "/_sim/faults", {"mode": "error"})
    assert (await call(http, "POST", "/_sim/reset"))[1] == {"reset": True}
    state = (await call(http, "GET", "/_sim/state"))[1]
    assert state["orders"] == [] and state["idempotency_keys"] == []
    assert state["faults"]["mode"] == "none" and state["deliveries"] == []
    assert state["webhooks"]["reorder"] is False


# --- the command line ------------------------------------------------------------------------


def test_main_serves_and_stops_promptly_while_a_fault_sleeps():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.stripe_sim", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "did not start"
                time.sleep(0.05)

        fault = {"mode": "timeout", "delay_ms": 600_000, "count": 1}
        assert _http_json(base + "/_sim/faults", fault)["mode"] == "timeout"
        stuck = urllib.request.Request(base + "/v1/balance",
                                       headers={"Authorization": "Bearer sk_test_x"})
        answers: list[dict] = []
        client = threading.Thread(target=lambda: answers.append(_http_json(stuck)), daemon=True)
        client.start()
        while _http_json(base + "/_sim/faults")["mode"] != "none":  # it took the fault
            assert time.monotonic() < deadline + 15, "the request never reached the simulator"
            time.sleep(0.02)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        client.join(5)
        # Woken at shutdown, the sleeping request is still answered (not cut off by the
        # shutdown timeout), so stopping never waits for a fault's delay.
        assert answers and answers[0].get("object") == "balance"
        assert f"stripe_sim listening on {base}" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _http_json(url: str | urllib.request.Request, body: dict | None = None) -> dict:
    """A JSON call from a plain thread; {} when the connection ends without an answer."""
    if body is not None:
        url = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return json.load(resp)
    except OSError:
        return {}
