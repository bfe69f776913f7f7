"""Processor-neutral parts of the local processor simulators (Stripe now; Square and PayPal next).

A simulator is an aiohttp app built by `sim_app(state, error_response=...)` around a state object
that subclasses `SimState`. What it gets from here, so that it only has to write its own API:

- Fault switches (`Fault`, `SimState.take_fault`, applied by a middleware in front of everything
  but `/_sim/`): `error` answers a 5xx, or a 429 (rate limited), before the request runs (nothing
  recorded; the body comes from the simulator's `error_response` hook), `slow` waits before running it, `timeout` runs and
  records it and then answers late, `disconnect` runs and records it and then closes the TCP
  connection without any HTTP answer (after `delay_ms`, if set). `count` limits how many requests
  are affected, `path_prefix` which ones.
- Idempotency records (`IdempotencyStore`): the same key and request replays the stored status and
  body, a different request under a used key or a key whose first request is still running is
  rejected (in the simulator's own error shape), and answers marked "not saved" free the key. Where
  the key comes from is a `KeySource`: `header_key("Idempotency-Key")` (Stripe),
  `body_key("idempotency_key")` (Square), `header_key("PayPal-Request-Id")` (PayPal).
- Webhook delivery (`WebhookDeliverer`): POSTs a `Webhook` body with headers from the simulator's
  signer to the endpoint URL, retries on a non-2xx answer or a connection error after each of
  `retry_delays`, and records every attempt in `deliveries`. Switches, for testing receivers:
  `duplicate` (every webhook is delivered twice, signed afresh), `delay_ms` (every webhook waits
  that long before its first attempt) and `reorder` (webhooks are held, not sent; a flush releases
  the held ones newest first, one after another, so a receiver sees them in reverse order; with
  `batch` set, a flush happens by itself whenever that many are held).
- The `/_sim` controls every simulator answers (bodies are JSON; every POST answers the new
  settings, a bad body is a 400 `{"error": ...}`):
    GET|POST /_sim/faults             {"mode", "delay_ms", "count", "path_prefix", "status"}
    GET      /_sim/webhooks           the webhook switches and the ids of held events
    POST     /_sim/webhooks/duplicate {"enabled": bool}
    POST     /_sim/webhooks/delay     {"ms": int >= 0}
    POST     /_sim/webhooks/reorder   {"enabled": bool, "batch": int >= 1 | null}
                                      (turning reorder off releases what is held, newest first)
    POST     /_sim/webhooks/flush     releases the held webhooks now: {"released": n}
    GET      /_sim/deliveries         {"data": [every delivery attempt]}
    GET      /_sim/state              the simulator's objects plus all of the above
    POST     /_sim/reset              forgets everything and turns every switch off
- Runners: `start_sim(create_app)` serves on a real port inside the caller's loop (tests), and
  `main(create_app, name=..., default_port=...)` is a simulator's command line. Sleeping faults and
  webhook waits wake at shutdown, so stopping never waits for them.
- Keeping what a processor keeps (`--state-file PATH`, which `make run` passes): the objects a
  simulator names in `SimState.durable` (accounts with their payments, refunds, events, webhook
  endpoints and idempotency records) are written to PATH when it stops and read back when it
  starts, so a restarted sandbox still knows the payments it took (reconciliation, re-fetches,
  retries under the same key). Switches, held webhooks and delivery records are not kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import msgspec
import uvloop
from aiohttp import web

FAULT_MODES = ("none", "error", "slow", "timeout", "disconnect")
# Without an explicit delay_ms, a timeout is long enough for any client timeout to fire.
DEFAULT_FAULT_DELAY_MS = {"slow": 1_000, "timeout": 30_000}
SIM_PREFIX = "/_sim/"
SHUTDOWN_TIMEOUT = 2.0
_ALNUM = string.ascii_letters + string.digits


# Each random byte read as a letter or digit (a slight bias towards the first 8 of 62 does not
# matter for simulated ids). One urandom call and one translate per token: choosing each character
# through `secrets.choice` was a third of the simulator's CPU under load.
_BYTE_TO_ALNUM = bytes(ord(_ALNUM[i % len(_ALNUM)]) for i in range(256))


def random_token(length: int = 24) -> str:
    return secrets.token_bytes(length).translate(_BYTE_TO_ALNUM).decode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    """Pretty-printed, as Stripe answers (msgspec's encoder: the standard library's was a sixth of
    the simulator's CPU under load)."""
    return web.Response(body=msgspec.json.format(msgspec.json.encode(obj), indent=2), status=status,
                        content_type="application/json")


async def read_json_object(request: web.Request) -> dict:
    """The request's JSON object body; an empty body is `{}`. Raises ValueError otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- faults --------------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault switch; see the module docstring for what each mode does."""

    mode: str = "none"
    delay_ms: int = 0
    count: int | None = None  # requests left to affect; None = until changed or reset
    path_prefix: str | None = None  # None = the simulator's API paths (SimState.api_prefixes)
    status: int = 500  # what `error` answers

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Fault:
        """A fault from a `/_sim/faults` body; raises ValueError naming the bad field."""
        unknown = set(body) - {"mode", "delay_ms", "count", "path_prefix", "status"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        mode = body.get("mode", "none")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}, not {mode!r}")
        delay = body.get("delay_ms")
        if delay is None:
            delay = DEFAULT_FAULT_DELAY_MS.get(mode, 0)
        if not _is_int(delay) or delay < 0:
            raise ValueError("delay_ms must be a non-negative integer")
        count = body.get("count")
        if count is not None and (not _is_int(count) or count < 1):
            raise ValueError("count must be a positive integer or null")
        prefix = body.get("path_prefix")
        if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")):
            raise ValueError("path_prefix must be a path starting with / or null")
        status = body.get("status", 500)
        if not _is_int(status) or not (500 <= status <= 599 or status == 429):
            raise ValueError("status must be 429 or an integer from 500 to 599")
        return cls(mode, delay, count, prefix, status)


ErrorHook = Callable[[web.Request, int], web.StreamResponse]


def default_error_response(request: web.Request, status: int) -> web.Response:
    return json_response({"error": "simulated fault"}, status)


def fault_middleware(error_response: ErrorHook) -> Any:
    """Applies `SimState.take_fault`; outermost, so an `error` never reaches idempotency or
    the endpoint and a `timeout`/`disconnect` happens after everything was recorded."""

    @web.middleware
    async def apply_faults(request: web.Request, handler: Any) -> web.StreamResponse:
        state = request.app[STATE]
        fault = state.take_fault(request.path)
        if fault is None:
            return await handler(request)
        if fault.mode == "error":
            return error_response(request, fault.status)
        if fault.mode == "slow":
            await state.pause(fault.delay_ms / 1000)
        response = await handler(request)
        if fault.mode == "timeout":
            await state.pause(fault.delay_ms / 1000)
        elif fault.mode == "disconnect":
            if fault.delay_ms:
                await state.pause(fault.delay_ms / 1000)
            # aiohttp then finds the transport gone and drops the response unsent.
            request.protocol.force_close()
        return response

    return apply_faults


# --- idempotency ---------------------------------------------------------------------------

KeySource = Callable[[web.Request, Any], "str | None"]


def header_key(name: str, methods: Iterable[str] = ("POST",)) -> KeySource:
    """The key is a request header (Stripe's Idempotency-Key, PayPal's PayPal-Request-Id);
    requests with other methods are not idempotent."""
    wanted = {m.upper() for m in methods}

    def key_of(request: web.Request, body: Any) -> str | None:
        if request.method not in wanted:
            return None
        return request.headers.get(name) or None

    return key_of


def body_key(name: str) -> KeySource:
    """The key is a field of the parsed JSON body (Square's idempotency_key)."""

    def key_of(request: web.Request, body: Any) -> str | None:
        value = body.get(name) if isinstance(body, Mapping) else None
        return value if isinstance(value, str) and value else None

    return key_of


@dataclass
class IdempotencyRecord:
    fingerprint: Any
    request_id: str
    status: int | None = None  # None while the first request is still running
    body: bytes = b""
    content_type: str = "application/json"
    charset: str | None = None
    created: float = field(default_factory=time.time)  # for KEPT_IDEMPOTENCY_SECONDS

    def replay(self, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(body=self.body, status=self.status or 500,
                            content_type=self.content_type, charset=self.charset,
                            headers=dict(headers or {}))


@dataclass
class Claim:
    """What a key lookup found: `new` (the caller runs the request and must `finish` or
    `release`), `replay` (the stored answer), `mismatch` (the key was used for another
    request) or `in_progress` (the first request with this key has not answered yet)."""

    outcome: str
    key: str
    record: IdempotencyRecord


class IdempotencyStore:
    """Idempotency records of one scope (one account, one access token ...). Fingerprints are
    compared with ==; a processor that does not compare requests passes the same fingerprint."""

    def __init__(self, key_source: KeySource) -> None:
        self.key_source = key_source
        self.records: dict[str, IdempotencyRecord] = {}

    def key_of(self, request: web.Request, body: Any = None) -> str | None:
        return self.key_source(request, body)

    def claim(self, key: str, fingerprint: Any, request_id: str) -> Claim:
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = IdempotencyRecord(fingerprint, request_id)
            return Claim("new", key, record)
        if record.fingerprint != fingerprint:
            return Claim("mismatch", key, record)
        if record.status is None:
            return Claim("in_progress", key, record)
        return Claim("replay", key, record)

    def finish(self, key: str, response: web.Response) -> None:
        record = self.records[key]
        body = response.body
        record.status, record.body = response.status, body if isinstance(body, bytes) else b""
        record.content_type, record.charset = response.content_type, response.charset

    def release(self, key: str) -> None:
        self.records.pop(key, None)

    def clear(self) -> None:
        self.records.clear()

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    async def run(self, key: str | None, fingerprint: Any, request_id: str,
                  call: Callable[[], Awaitable[tuple[web.Response, bool]]], *,
                  reject: Callable[[Claim], web.Response],
                  replay_headers: Callable[[IdempotencyRecord], Mapping[str, str]] | None = None,
                  ) -> web.Response:
        """Runs `call` under `key` (no key: just runs it). `call` answers (response, saved);
        an unsaved answer (validation before the endpoint starts) frees the key for a retry."""
        if key is None:
            return (await call())[0]
        claim = self.claim(key, fingerprint, request_id)
        if claim.outcome in ("mismatch", "in_progress"):
            return reject(claim)
        if claim.outcome == "replay":
            headers = replay_headers(claim.record) if replay_headers else {}
            return claim.record.replay(headers)
        try:
            response, saved = await call()
        except BaseException:
            # A request that never answered must not leave its key in progress forever.
            self.release(key)
            raise
        if saved:
            self.finish(key, response)
        else:
            self.release(key)
        return response


# --- webhooks ------------------------------------------------------------------------------


def _always() -> bool:
    return True


@dataclass
class Webhook:
    """One event for one endpoint. `secret` and `endpoint_id` are for the signer; `wanted` is
    asked before every attempt (e.g. False once the endpoint is deleted)."""

    event_id: str
    event_type: str
    url: str
    body: bytes
    secret: str = ""
    endpoint_id: str | None = None
    content_type: str = "application/json; charset=utf-8"
    wanted: Callable[[], bool] = _always


Signer = Callable[[Webhook], Mapping[str, str]]


@dataclass
class _Job:
    webhook: Webhook
    copies: int  # the switches as they were when the event happened
    delay: float


@dataclass
class WebhookDeliverer:
    """Signed webhook delivery with retries and the duplicate / delay / reorder switches."""

    signer: Signer
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    retry_delays: tuple[float, ...] = (0.2, 1.0, 3.0)
    timeout: float = 10.0
    duplicate: bool = False
    delay_ms: int = 0
    reorder: bool = False
    batch: int | None = None
    deliveries: list[dict] = field(default_factory=list)
    held: list[_Job] = field(default_factory=list)
    _tasks: set[asyncio.Task] = field(default_factory=set, repr=False)
    _http: aiohttp.ClientSession | None = field(default=None, repr=False)

    def settings(self) -> dict:
        return {"duplicate": self.duplicate, "delay_ms": self.delay_ms, "reorder": self.reorder,
                "batch": self.batch, "held": [job.webhook.event_id for job in self.held]}

    def send(self, webhook: Webhook) -> None:
        """Queue one webhook; must be called inside the running loop."""
        job = _Job(webhook, 2 if self.duplicate else 1, self.delay_ms / 1000)
        if self.reorder:
            self.held.append(job)
            if self.batch is not None and len(self.held) >= self.batch:
                self.flush()
            return
        self._spawn(self._deliver(job))

    def flush(self) -> int:
        """Release the held webhooks, newest first, one after another; answers how many."""
        jobs, self.held = self.held[::-1], []
        if jobs:
            self._spawn(self._deliver_in_turn(jobs))
        return len(jobs)

    def reset(self) -> None:
        """Switches off, records and held webhooks dropped, deliveries in flight cancelled.
        `retry_delays` stays: it is set up by whoever built the simulator."""
        self.duplicate, self.delay_ms, self.reorder, self.batch = False, 0, False, None
        self.deliveries, self.held = [], []
        for task in list(self._tasks):
            task.cancel()

    async def idle(self) -> None:
        """Wait until nothing is being delivered (held webhooks do not count)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        self.closing.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, seconds: float) -> bool:
        """Sleep; False when the simulator is shutting down instead."""
        if seconds > 0:
            try:
                await asyncio.wait_for(self.closing.wait(), seconds)
            except TimeoutError:
                pass
        return not self.closing.is_set()

    async def _deliver_in_turn(self, jobs: list[_Job]) -> None:
        for job in jobs:
            await self._deliver(job)

    async def _deliver(self, job: _Job) -> None:
        if not await self._wait(job.delay):
            return
        webhook = job.webhook
        for copy in range(1, job.copies + 1):  # a duplicate is the same event, signed afresh
            for attempt, delay in enumerate((0.0, *self.retry_delays), 1):
                if not await self._wait(delay) or not webhook.wanted():
                    return
                status, error = await self._post(webhook)
                self.deliveries.append({
                    "event_id": webhook.event_id, "type": webhook.event_type,
                    "endpoint": webhook.endpoint_id, "url": webhook.url, "copy": copy,
                    "attempt": attempt, "status": status, "error": error})
                if status is not None and 200 <= status < 300:
                    break

    async def _post(self, webhook: Webhook) -> tuple[int | None, str | None]:
        self._http = self._http or aiohttp.ClientSession()
        headers = {"Content-Type": webhook.content_type, **self.signer(webhook)}
        try:
            async with self._http.post(webhook.url, data=webhook.body, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                await resp.read()
                return resp.status, None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"


# --- state ---------------------------------------------------------------------------------


class SimState:
    """What every simulator keeps: the fault switch, the webhook deliverer and the shutdown
    flag. Subclasses add their objects in `reset()` (called from `__init__`), override
    `sign_webhook` and `snapshot`, and set `api_prefixes` (where faults apply by default)."""

    api_prefixes: tuple[str, ...] = ("/",)
    # What a real processor keeps across a restart: attribute name -> its type (msgspec), written
    # by `dump` and read back by `restore` (`--state-file`); `key_source` is the one the
    # idempotency stores inside them take.
    durable: ClassVar[Mapping[str, Any]] = {}
    key_source: ClassVar[KeySource | None] = None

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.webhooks = WebhookDeliverer(self.sign_webhook, self.closing)
        self.reset()

    def reset(self) -> None:
        self.fault = Fault()
        self.webhooks.reset()

    def take_fault(self, path: str) -> Fault | None:
        """The fault for this request, if any, counting it down; `/_sim/` is never affected."""
        fault = self.fault
        if fault.mode == "none" or path.startswith(SIM_PREFIX):
            return None
        prefixes = (fault.path_prefix,) if fault.path_prefix else self.api_prefixes
        if not path.startswith(prefixes):
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.fault = Fault()
        return fault

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at shutdown so a 30 s 'timeout' does not hold up teardown."""
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
        except TimeoutError:
            pass

    def sign_webhook(self, webhook: Webhook) -> Mapping[str, str]:
        """The processor's signature headers for one delivery attempt."""
        return {}

    def snapshot(self) -> dict:
        """The simulator's own objects for `GET /_sim/state`."""
        return {}

    def dump(self) -> bytes:
        """The `durable` objects as JSON (idempotency records whose request never answered are
        left out: that request was never done; so are those over KEPT_IDEMPOTENCY_SECONDS old)."""
        return msgspec.json.encode({"version": STATE_FILE_VERSION,
                                    "objects": {name: getattr(self, name) for name in self.durable}},
                                   enc_hook=_encode_store)

    def restore(self, data: bytes) -> None:
        """Replace the `durable` objects with those `dump` wrote; all or nothing."""
        envelope = msgspec.json.decode(data, type=_StateFile)
        if envelope.version != STATE_FILE_VERSION:
            raise ValueError(f"state file version {envelope.version}, this simulator reads {STATE_FILE_VERSION}")
        if missing := set(self.durable) - set(envelope.objects):
            raise ValueError(f"state file without {', '.join(sorted(missing))}")
        restored = {name: msgspec.json.decode(envelope.objects[name], type=kind, dec_hook=self._decode_store)
                    for name, kind in self.durable.items()}
        for name, value in restored.items():
            setattr(self, name, value)

    def _decode_store(self, kind: type, value: Any) -> Any:
        if kind is not IdempotencyStore:
            raise NotImplementedError(kind)
        key_source = type(self).key_source  # read off the class: a function, not a bound method
        if key_source is None:
            raise ValueError(f"{type(self).__name__} keeps idempotency stores but names no key_source")
        store = IdempotencyStore(key_source)
        for key, record in msgspec.convert(value, dict[str, IdempotencyRecord]).items():
            # The fingerprints were (method, path, body) tuples; JSON brought them back as lists.
            record.fingerprint = tuple(record.fingerprint) if isinstance(record.fingerprint, list) \
                else record.fingerprint
            store.records[key] = record
        return store

    # Shorthands kept from the Stripe simulator's first version.
    @property
    def deliveries(self) -> list[dict]:
        return self.webhooks.deliveries

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        return self.webhooks.retry_delays

    @webhook_retry_delays.setter
    def webhook_retry_delays(self, delays: tuple[float, ...]) -> None:
        self.webhooks.retry_delays = tuple(delays)

    @property
    def duplicate_webhooks(self) -> bool:
        return self.webhooks.duplicate


STATE = web.AppKey("sim_state", SimState)
STATE_FILE = web.AppKey("sim_state_file", Path)
STATE_FILE_VERSION = 1

log = logging.getLogger("sandbox")


class _StateFile(msgspec.Struct):
    version: int
    objects: dict[str, msgspec.Raw]


# A kept state file holds idempotency records this long (Stripe removes keys "after they're at least
# 24 hours old"): without a bound, every payment's answer would be kept for good.
KEPT_IDEMPOTENCY_SECONDS = 24 * 3600


def _encode_store(obj: Any) -> Any:
    if isinstance(obj, IdempotencyStore):
        oldest = time.time() - KEPT_IDEMPOTENCY_SECONDS
        return {key: record for key, record in obj.records.items()
                if record.status is not None and record.created >= oldest}
    raise NotImplementedError(f"cannot keep a {type(obj).__name__}")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's collector off while millions of objects are read at once: with it on,
    reading the Stripe simulator's 415 MB after `make bench` took 21.5 s (each full collection
    scanning all that was read so far), without it 2.6 s. What was read then lives as long as the
    simulator, so it goes straight to the permanent generation (as `_freeze_survivors` does)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def load_state(state: SimState, path: Path) -> None:
    """Read what the last run kept, if anything. A file this simulator cannot read is moved aside
    (`<name>.unreadable`) and the simulator starts empty, saying so: a sandbox must start."""
    if not path.exists():
        return
    started = time.perf_counter()
    try:
        with _collector_paused():
            state.restore(path.read_bytes())
    except (OSError, ValueError, TypeError, msgspec.MsgspecError) as exc:
        aside = path.with_name(path.name + ".unreadable")
        try:
            os.replace(path, aside)
        except OSError as move:
            log.warning("could not read %s (%s) nor move it aside (%s); started empty", path, exc, move)
        else:
            log.warning("could not read %s (%s); moved it to %s and started empty", path, exc, aside)
        return
    log.info("restored %s (%.1f MB) in %.2f s", path, path.stat().st_size / 1e6, time.perf_counter() - started)


def save_state(state: SimState, path: Path) -> None:
    """Write the `durable` objects to `path` (a temporary file renamed over it: a crash mid-write
    leaves the last complete one)."""
    started = time.perf_counter()
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = state.dump()  # one bytes object: nothing for the collector to scan
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()  # so that the mode below applies: it holds the accounts' API keys
        with open(partial, "wb", opener=lambda name, flags: os.open(name, flags, 0o600)) as out:
            out.write(data)
        os.replace(partial, path)
    except Exception as exc:  # a full disk, something unencodable: the stop itself must finish
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.error("could not keep %s (%s); the last one kept stays", path, exc)
        return
    log.info("kept %s (%.1f MB) in %.2f s", path, path.stat().st_size / 1e6, time.perf_counter() - started)


# --- /_sim controls -------------------------------------------------------------------------


def _bad_body(exc: Exception) -> web.Response:
    return json_response({"error": str(exc)}, 400)


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f'body must be {{"{name}": true|false}}')
    return value


async def sim_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            state.fault = Fault.from_json(await read_json_object(request))
        except ValueError as exc:
            return _bad_body(exc)
    elif request.method != "GET":
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    return json_response(asdict(state.fault))


async def sim_webhooks(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].webhooks.settings())


async def sim_webhooks_duplicate(request: web.Request) -> web.Response:
    webhooks = request.app[STATE].webhooks
    try:
        webhooks.duplicate = _flag(await read_json_object(request), "enabled", True)
    except ValueError as exc:
        return _bad_body(exc)
    return json_response({"enabled": webhooks.duplicate, **webhooks.settings()})


async def sim_webhooks_delay(request: web.Request) -> web.Response:
    webhooks = request.app[STATE].webhooks
    try:
        ms = (await read_json_object(request)).get("ms")
        if not _is_int(ms) or ms < 0:
            raise ValueError('body must be {"ms": <non-negative integer>}')
    except ValueError as exc:
        return _bad_body(exc)
    webhooks.delay_ms = ms
    return json_response(webhooks.settings())


async def sim_webhooks_reorder(request: web.Request) -> web.Response:
    webhooks = request.app[STATE].webhooks
    try:
        body = await read_json_object(request)
        enabled = _flag(body, "enabled", True)
        batch = body.get("batch")
        if batch is not None and (not _is_int(batch) or batch < 1):
            raise ValueError("batch must be a positive integer or null")
    except ValueError as exc:
        return _bad_body(exc)
    webhooks.reorder, webhooks.batch = enabled, batch if enabled else None
    # Nothing may stay held once holding is off; a new batch size may already be reached.
    released = webhooks.flush() if not enabled or (
        batch is not None and len(webhooks.held) >= batch) else 0
    return json_response({"enabled": enabled, "released": released, **webhooks.settings()})


async def sim_webhooks_flush(request: web.Request) -> web.Response:
    return json_response({"released": request.app[STATE].webhooks.flush()})


async def sim_deliveries(request: web.Request) -> web.Response:
    return json_response({"data": request.app[STATE].webhooks.deliveries})


async def sim_state(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({
        **state.snapshot(), "faults": asdict(state.fault), "webhooks": state.webhooks.settings(),
        "duplicate_webhooks": state.webhooks.duplicate, "deliveries": state.webhooks.deliveries,
    })


async def sim_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return json_response({"reset": True})


SIM_ROUTES = [
    ("*", "/_sim/faults", sim_faults),
    ("GET", "/_sim/webhooks", sim_webhooks),
    ("POST", "/_sim/webhooks/duplicate", sim_webhooks_duplicate),
    ("POST", "/_sim/webhooks/delay", sim_webhooks_delay),
    ("POST", "/_sim/webhooks/reorder", sim_webhooks_reorder),
    ("POST", "/_sim/webhooks/flush", sim_webhooks_flush),
    ("GET", "/_sim/deliveries", sim_deliveries),
    ("GET", "/_sim/state", sim_state),
    ("POST", "/_sim/reset", sim_reset),
]


# --- app and runners -------------------------------------------------------------------------


async def _lifecycle(app: web.Application) -> Any:
    yield
    await app[STATE].webhooks.close()
    if (path := app.get(STATE_FILE)) is not None:  # after the last request was answered
        save_state(app[STATE], path)


async def _wake_sleepers(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for in-flight handlers, so paused faults end now.
    app[STATE].closing.set()


def sim_app(state: SimState, *, error_response: ErrorHook = default_error_response,
            middlewares: Iterable[Any] = ()) -> web.Application:
    """An app with the fault middleware (outermost), the simulator's own middlewares, the
    common `/_sim` routes and clean shutdown; the caller adds its API routes."""
    app = web.Application(middlewares=[fault_middleware(error_response), *middlewares])
    app[STATE] = state
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_wake_sleepers)
    for method, path, handler in SIM_ROUTES:
        app.router.add_route(method, path, handler)
    return app


@dataclass
class Running:
    """A simulator on a real port: `url` for clients, `state` for in-process peeks."""

    runner: web.AppRunner
    url: str

    @property
    def state(self) -> Any:  # the simulator's own SimState subclass
        return self.runner.app[STATE]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_sim(create_app: Callable[[], web.Application], host: str = "127.0.0.1",
                    port: int = 0) -> Running:
    """Serve `create_app()` inside the running loop; port 0 picks a free one."""
    runner = web.AppRunner(create_app(), shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return Running(runner, f"http://{host}:{runner.addresses[0][1]}")


# How often a simulator run from the command line moves what survived into the permanent generation.
GC_FREEZE_SECONDS = 1.0


async def _freeze_survivors(app: web.Application) -> Any:
    """A simulator keeps everything it was sent (intents, charges, events) for good, so its heap only
    grows, and each of Python's full collections scans all of it: after some 20,000 route-and-pay
    payments the Stripe simulator stalled for a quarter of a second every 9 s or so, and every
    client waiting on it with it (tests/load/README.md). Once a second what survived moves to the
    permanent generation (`gc.freeze`, which only links lists), so a collection scans what is new.
    Short-lived cycles are collected by the young generations long before that; a cycle that is
    still uncollected when frozen stays (a simulator's process lives as long as `make run`)."""

    async def freeze() -> None:
        while True:
            await asyncio.sleep(GC_FREEZE_SECONDS)
            gc.freeze()

    task = asyncio.get_running_loop().create_task(freeze())
    yield
    task.cancel()


def main(create_app: Callable[[], web.Application], *, name: str, default_port: int,
         argv: list[str] | None = None) -> None:
    """A simulator's command line: `python -m sandbox.<name> [--host H] [--port P]`."""
    parser = argparse.ArgumentParser(prog=name, description="Local processor simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--state-file", type=Path,
                        help="keep the processor's objects here across restarts (read at start, written at stop)")
    parser.add_argument("--access-log", action="store_true",
                        help="log every request (off by default: a line per request cost the simulator "
                             "a fifth of its CPU under load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # uvloop, as the services run on: socket I/O in C (asyncio's own loop was a tenth of the CPU).
    app = create_app()
    if args.state_file is not None:
        load_state(app[STATE], args.state_file)
        app[STATE_FILE] = args.state_file
    print(f"{name} listening on http://{args.host}:{args.port}", flush=True)
    app.cleanup_ctx.append(_freeze_survivors)
    web.run_app(app, host=args.host, port=args.port, print=None, loop=uvloop.new_event_loop(),
                shutdown_timeout=SHUTDOWN_TIMEOUT, **({} if args.access_log else {"access_log": None}))
