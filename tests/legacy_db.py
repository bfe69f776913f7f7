"""A generated BookedBarber V2 database, with the awkward rows a real one has, and what a correct
import must carry over, computed here from the generated rows alone (not with the import's code).

Awkward on purpose: null commission rates, a rate stored as a percentage (20.00), a barber without
a Stripe account, a barber with an impossible rate, clients and admins among the users, payments
that are refunded, pending, failed, of zero or negative amount, with a status in capitals, for a
user who is not a barber or does not exist, without an appointment, or whose appointment has no
client. Amounts are whole cents, as V2's `numeric(10,2)` holds them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

SCHEMA = """
CREATE TABLE users (
    id serial PRIMARY KEY, email varchar(255) NOT NULL, role varchar(20) NOT NULL,
    commission_rate numeric(5, 2), stripe_account_id varchar(255), created_at timestamp NOT NULL DEFAULT now());
CREATE TABLE appointments (
    id serial PRIMARY KEY, barber_id integer, client_id integer, start_time timestamp, price numeric(10, 2));
CREATE TABLE payments (
    id serial PRIMARY KEY, barber_id integer, appointment_id integer, amount numeric(10, 2),
    status varchar(20), stripe_payment_intent_id varchar(255), created_at timestamp);
"""
STATUSES = ["completed"] * 14 + ["refunded"] * 2 + ["pending", "failed", "Completed"]


@dataclass
class LegacyData:
    users: list[tuple] = field(default_factory=list)  # id, email, role, commission_rate, stripe_account_id
    appointments: list[tuple] = field(default_factory=list)  # id, barber_id, client_id, start_time, price
    payments: list[tuple] = field(default_factory=list)  # id, barber_id, appointment_id, amount, status, pi, created_at

    def barber_rates(self, default_rate: Decimal) -> dict[int, Decimal]:
        """The barbers a correct import configures, with their commission rate as a fraction."""
        rates = {}
        for uid, _, role, rate, _ in self.users:
            if role != "barber":
                continue
            if rate is None:
                rates[uid] = default_rate
            elif rate <= 1:
                rates[uid] = rate
            elif rate <= 100:
                rates[uid] = rate / 100
        return rates

    def expected(self, default_rate: Decimal = Decimal("0.20")) -> dict[int, tuple[int, Decimal, Decimal]]:
        """Per barber: (count, amount, refunded) of the payments that must be carried over."""
        rates = self.barber_rates(default_rate)
        out: dict[int, list] = defaultdict(lambda: [0, Decimal(0), Decimal(0)])
        for _, barber_id, _, amount, status, _, created in self.payments:
            status = (status or "").lower()
            if status in ("completed", "refunded") and amount is not None and amount > 0 and barber_id in rates \
                    and created is not None:
                figures = out[barber_id]
                figures[0] += 1
                figures[1] += amount
                figures[2] += amount if status == "refunded" else 0
        return {b: tuple(f) for b, f in out.items()}

    def client_of(self) -> dict[int, int | None]:
        return {a[0]: a[2] for a in self.appointments}


def generate(*, barbers: int, payments: int, seed: int = 7, start: datetime | None = None) -> LegacyData:
    rnd = random.Random(seed)
    data = LegacyData()
    uid = 0
    for i in range(barbers):
        uid += 1
        rate = [None, Decimal("0.15"), Decimal("0.20"), Decimal("0.25"), Decimal("20.00")][i % 5]
        account = None if i % 7 == 3 else f"acct_legacy{uid:06d}"
        data.users.append((uid, f"barber{uid}@example.test", "barber", rate, account))
    data.users.append((uid + 1, "broken-rate@example.test", "barber", Decimal("250.00"), "acct_broken"))
    data.users.append((uid + 2, "admin@example.test", "admin", None, None))
    clients = list(range(uid + 3, uid + 3 + max(10, barbers * 5)))
    data.users += [(c, f"client{c}@example.test", "client", None, None) for c in clients]
    barber_ids = [u[0] for u in data.users if u[2] == "barber"]
    not_barbers = [uid + 2, clients[0], 999_999]  # an admin, a client, nobody
    start = start or datetime(2025, 1, 1)
    for pid in range(1, payments + 1):
        barber_id = rnd.choice(not_barbers) if pid % 97 == 0 else barber_ids[pid % len(barber_ids)]
        client = None if pid % 31 == 0 else rnd.choice(clients)
        appointment_id = None if pid % 53 == 0 else pid
        if appointment_id is not None:
            data.appointments.append((appointment_id, barber_id, client, None, None))
        amount = Decimal(rnd.randint(1500, 12000)) / 100
        if pid % 89 == 0:
            amount = Decimal("0.00")
        elif pid % 211 == 0:
            amount = -amount
        status = STATUSES[rnd.randrange(len(STATUSES))]
        created = start + timedelta(minutes=pid * 7 % (60 * 24 * 600), seconds=pid % 60)
        data.payments.append((pid, barber_id, appointment_id, amount, status, f"pi_legacy{pid:09d}", created))
    return data


async def write(dsn: str, data: LegacyData) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table("users", columns=("id", "email", "role", "commission_rate",
                                                          "stripe_account_id"), records=data.users)
        await conn.copy_records_to_table("appointments", columns=("id", "barber_id", "client_id", "start_time",
                                                                 "price"), records=data.appointments)
        await conn.copy_records_to_table("payments", columns=("id", "barber_id", "appointment_id", "amount", "status",
                                                             "stripe_payment_intent_id", "created_at"),
                                         records=data.payments)
        for table in ("users", "appointments", "payments"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT coalesce(max(id), 1) FROM {table}))")
    finally:
        await conn.close()


def naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)
