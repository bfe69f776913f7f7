"""The operator endpoints (`shared.operations`, served by every service under its prefix; tested
through the router): the barber config list, the audit log written with each config change, the
dead letters with replay (published again on NATS) and discard, and the pipeline's status. Admin
only; every action audited in the same transaction as its effect."""

from __future__ import annotations

import itertools
import uuid

import msgspec
import nats
import sqlalchemy as sa

from services.router import tables as t
from shared.db import PlatformTables
from tests.integration.router_support import BASE, admin, barber

_ids = itertools.count(1)
platform = PlatformTables(t.metadata)
OPS = f"{BASE}/operations"


def next_barber() -> int:
    return 1_700_000 + next(_ids)


async def put_config(client, barber_id: int, headers=None, **fields) -> dict:
    url = f"{BASE}/config/{barber_id}" if headers is None else f"{BASE}/config"
    response = await client.put(url, json=fields, headers=headers or admin())
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_config_list_filters_and_pages_and_is_for_admins(client) -> None:
    ours = {next_barber(): mode for mode in ("hybrid", "decentralized", "hybrid")}
    for barber_id, mode in ours.items():
        await put_config(client, barber_id, payment_mode=mode, preferred_processor="square",
                         fallback_enabled=barber_id % 2 == 0)
    listed = (await client.get(f"{BASE}/configs", params={"payment_mode": "hybrid", "limit": 500},
                               headers=admin())).json()
    assert listed["hybrid_payments_enabled"] is True
    mine = {item["barber_id"] for item in listed["items"]} & ours.keys()
    assert mine == {b for b, mode in ours.items() if mode == "hybrid"}
    assert all(item["payment_mode"] == "hybrid" for item in listed["items"])
    # Walking one item per page visits every row once, in the order of one big page.
    everything = (await client.get(f"{BASE}/configs", params={"limit": 500}, headers=admin())).json()["items"]
    walked, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"{BASE}/configs", params=params, headers=admin())).json()
        walked += [item["barber_id"] for item in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert walked == [item["barber_id"] for item in everything]
    fallback_off = (await client.get(f"{BASE}/configs", params={"fallback_enabled": "false", "limit": 500},
                                     headers=admin())).json()["items"]
    assert {i["barber_id"] for i in fallback_off} & ours.keys() == {b for b in ours if b % 2 == 1}
    assert (await client.get(f"{BASE}/configs", headers=barber(1))).status_code == 403
    bad = await client.get(f"{BASE}/configs", params={"payment_mode": "sometimes"}, headers=admin())
    assert bad.status_code == 422 and "payment_mode" in bad.json()["detail"]


async def test_every_config_change_is_audited_with_who_before_and_after(client) -> None:
    b = next_barber()
    await put_config(client, b, headers=barber(b), payment_mode="hybrid")  # the barber itself
    await put_config(client, b, payment_mode="centralized", fallback_enabled=True)  # an operator's roll-back
    trail = (await client.get(f"{OPS}/audit", params={"subject": f"barber:{b}"}, headers=admin())).json()["items"]
    assert [(e["actor_role"], e["action"]) for e in trail] == [("admin", "config.update"), ("barber", "config.update")]
    rollback, first = trail
    assert (first["actor_id"], first["before"]["is_default"], first["before"]["version"]) == (b, True, 0)
    assert (first["after"]["payment_mode"], first["after"]["version"]) == ("hybrid", 1)
    assert rollback["actor_id"] == 1000 and rollback["before"] == first["after"]
    assert (rollback["after"]["payment_mode"], rollback["after"]["version"]) == ("centralized", 2)
    # A refused change writes nothing.
    refused = await client.put(f"{BASE}/config/{b}", headers=admin(), json={"expected_version": 1, "payment_mode": "hybrid"})
    assert refused.status_code == 409
    again = (await client.get(f"{OPS}/audit", params={"subject": f"barber:{b}"}, headers=admin())).json()["items"]
    assert len(again) == 2
    assert (await client.get(f"{OPS}/audit", headers=barber(b))).status_code == 403


async def _park(db, subject: str, body: bytes) -> int:
    async with db.begin() as conn:
        return await conn.scalar(sa.insert(platform.dead_letters).values(
            consumer="router-connections", event_id=uuid.uuid4(), event_type="connection.changed",
            subject=subject, body=body, error="test: parked on purpose", attempts=5,
        ).returning(platform.dead_letters.c.id))


async def test_a_dead_letter_is_replayed_on_nats_or_discarded_and_both_are_audited(client, router_app, db) -> None:
    link = router_app.state.runtime.link
    subject = f"{link.subject_prefix}collection.replay_test"  # a subject the router does not consume
    body = msgspec.json.encode({"event_id": str(uuid.uuid4()), "marker": next_barber()})
    replay_id, discard_id = await _park(db, subject, body), await _park(db, subject, b"{}")

    waiting = (await client.get(f"{OPS}/dead-letters", params={"state": "waiting", "limit": 500},
                                headers=admin())).json()["items"]
    assert {replay_id, discard_id} <= {item["id"] for item in waiting}

    replayed = await client.post(f"{OPS}/dead-letters/{replay_id}/replay", headers=admin())
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["state"] == "replayed" and replayed.json()["replayed_at"]
    nc = await nats.connect(router_app.state.runtime.settings.nats_url)
    try:
        last = await nc.jetstream().get_last_msg(link.stream, subject)
    finally:
        await nc.close()
    assert last.data == body and last.headers["Nats-Msg-Id"].startswith(f"replay-router-{replay_id}-")

    for note, status in (("", 422), ("x" * 501, 422)):
        response = await client.post(f"{OPS}/dead-letters/{discard_id}/discard", json={"note": note}, headers=admin())
        assert response.status_code == status and "note" in response.json()["detail"], response.text
    discarded = await client.post(f"{OPS}/dead-letters/{discard_id}/discard", json={"note": "test data"},
                                  headers=admin())
    assert discarded.status_code == 200 and discarded.json()["state"] == "discarded"
    for path, body_json, status in ((f"{discard_id}/discard", {"note": "again"}, 409),
                                    (f"{discard_id}/replay", None, 409),
                                    (f"{replay_id}/discard", {"note": "after a replay"}, 409),
                                    ("999999999/replay", None, 404)):
        response = await client.post(f"{OPS}/dead-letters/{path}", json=body_json, headers=admin())
        assert response.status_code == status, (path, response.text)
    for letter_id in (0, 2**63):  # outside the bigint column: refused naming the parameter, never sent to Postgres
        response = await client.post(f"{OPS}/dead-letters/{letter_id}/replay", headers=admin())
        assert response.status_code in (400, 422) and "letter_id" in response.text, response.text
    assert (await client.post(f"{OPS}/dead-letters/{replay_id}/replay", headers=barber(1))).status_code == 403

    audit = {(e["subject"], e["action"]): e for e in
             (await client.get(f"{OPS}/audit", params={"limit": 500}, headers=admin())).json()["items"]}
    replay_entry = audit[(f"dead_letter:{replay_id}", "dead_letter.replay")]
    assert (replay_entry["before"]["state"], replay_entry["after"]["state"]) == ("waiting", "replayed")
    discard_entry = audit[(f"dead_letter:{discard_id}", "dead_letter.discard")]
    assert discard_entry["after"] == {**discard_entry["before"], "state": "discarded", "note": "test data"}
    assert [k for k in audit if k[0] == f"dead_letter:{discard_id}"] == [(f"dead_letter:{discard_id}",
                                                                          "dead_letter.discard")]


async def test_the_pipeline_status_names_every_consumer(client) -> None:
    status = (await client.get(f"{OPS}/status", headers=admin())).json()
    assert status["service"] == "router" and status["ready"] == {"database": True, "nats": True, "accepting": True}
    assert [c["consumer"] for c in status["consumers"]] == ["router-connections"]
    assert status["outbox_backlog"] >= 0 and status["dead_letters_waiting"] >= 0
    assert (await client.get(f"{OPS}/status", headers=barber(1))).status_code == 403


async def test_options_on_the_operator_endpoints_is_not_a_server_error(client) -> None:
    """Litestar's own OPTIONS answers pass the edge without a role check (when roles were guards on
    the controller, they ran for OPTIONS before authentication and failed with a 500, found by the
    schemathesis fuzz)."""
    for path in ("/status", "/audit", "/dead-letters", "/dead-letters/1/replay", "/dead-letters/1/discard"):
        response = await client.options(f"{OPS}{path}")
        assert response.status_code < 500, (path, response.status_code, response.text)


async def test_the_circuits_of_the_answering_router_process(client, router_app) -> None:
    board = router_app.state.router.configs.circuits  # this process's breakers
    for _ in range(10):
        board.circuit("connection:424242").record_failure(0.0)  # long ago: half-open by now
    answer = await client.get(f"{BASE}/circuits", headers=admin())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["replica"].endswith(f":{__import__('os').getpid()}")
    mine = [c for c in body["items"] if c["connection_id"] == 424242]
    assert mine == [{"name": "connection:424242", "connection_id": 424242, "state": "half_open", "failures": 10}]
    assert (await client.get(f"{BASE}/circuits", headers=barber(1))).status_code == 403
