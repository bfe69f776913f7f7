"""What the pages show, computed from what the services answered: plain functions, no I/O.

Money arrives as decimal strings and is formatted here, exactly (Decimal, never float); charts get
floats only as points to draw.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "CAD": "CA$", "AUD": "A$"}


def money(amount: str | Decimal | None, currency: str = "USD") -> str:
    """`"1234.5", "USD"` -> `"$1,234.50"`; an amount in a currency without a symbol keeps its code."""
    if amount is None or amount == "":
        return "—"
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    sign = "-" if value < 0 else ""
    text = f"{abs(value):,.2f}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency}"


def percent(rate: str | Decimal | None, places: int = 1) -> str:
    """`"0.125"` -> `"12.5 %"`."""
    if rate is None or rate == "":
        return "—"
    return f"{Decimal(str(rate)) * 100:.{places}f} %"


def progress_percent(progress: str | None) -> int:
    """The Six Figure progress bar's width: 0-100 (a barber past the target shows a full bar)."""
    if not progress:
        return 0
    return max(0, min(100, int(Decimal(progress) * 100)))


def dashboard_charts(dashboard: Mapping[str, Any]) -> dict[str, Any]:
    """Chart.js data for the barber's dashboard: gross volume per day, and volume by payment type
    and by processor."""
    daily = dashboard.get("daily", [])
    return {
        "daily": {
            "labels": [str(day["date"]) for day in daily],
            "volume": [float(Decimal(day["gross_volume"])) for day in daily],
            "count": [day["transaction_count"] for day in daily],
        },
        "by_type": _split(dashboard.get("by_payment_type", {})),
        "by_processor": _split(dashboard.get("by_processor", {})),
    }


def _split(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    names = sorted(groups)
    return {"labels": names, "volume": [float(Decimal(groups[n]["gross_volume"])) for n in names]}


# The payments list and its CSV export show the same columns, in this order.
PAYMENT_COLUMNS = (
    ("transaction_id", "transaction"), ("created_at", "created"), ("barber_id", "barber"),
    ("payment_type", "type"), ("processor", "processor"), ("status", "status"), ("amount", "amount"),
    ("currency", "currency"), ("refunded_amount", "refunded"), ("commission_amount", "commission"),
    ("processor_fee", "processor fee"), ("appointment_id", "appointment"),
)


def payment_row(item: Mapping[str, Any]) -> list[str]:
    item = as_payment(item)
    return ["" if item.get(key) is None else str(item.get(key)) for key, _ in PAYMENT_COLUMNS]


def csv_header() -> str:
    return _csv_line([label for _, label in PAYMENT_COLUMNS])


def csv_line(item: Mapping[str, Any]) -> str:
    return _csv_line(payment_row(item))


def _csv_line(cells: Iterable[str]) -> str:
    out = io.StringIO()
    # A cell a spreadsheet would run as a formula is quoted with a leading apostrophe (CSV injection).
    csv.writer(out, lineterminator="\r\n").writerow(
        ["'" + c if c[:1] in ("=", "+", "-", "@") and not _is_number(c) else c for c in cells])
    return out.getvalue()


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


def clean_filters(query: Mapping[str, str], allowed: Iterable[str]) -> dict[str, str]:
    """The filters a list page passes on to its service: the allowed names with a value, as given
    (the service validates them and its message is shown)."""
    return {name: query[name].strip() for name in allowed if query.get(name, "").strip()}


def overall_health(statuses: Mapping[str, Mapping[str, Any] | None]) -> bool:
    """All services answered and are ready, no dead letters wait, and no consumer is unreachable."""
    for status in statuses.values():
        if status is None or not all(status["ready"].values()) or status["dead_letters_waiting"]:
            return False
        if any(not c["reachable"] for c in status["consumers"]):
            return False
    return True


def as_payment(item: Mapping[str, Any]) -> dict[str, Any]:
    """A payment from either list in the router's shape (the external service names its id `id`
    and has no `payment_type`)."""
    if "transaction_id" in item:
        return dict(item)
    return {**item, "transaction_id": item.get("id"), "payment_type": "external"}


def timeline(transaction: Mapping[str, Any], route: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """One payment's life in time order: the route decided, the payment opened, its outcome, refunds."""
    currency = transaction.get("currency", "USD")
    steps: list[dict[str, str]] = []
    if route:
        steps.append({"at": str(route.get("decided_at") or ""), "what": "route decided",
                      "detail": f"{route['payment_type']} on {route['processor']}: {route.get('reason', '')}"
                                + (" (fallback)" if route.get("fallback_used") else "")})
    steps.append({"at": str(transaction.get("created_at") or ""), "what": "payment recorded",
                  "detail": f"{money(transaction.get('amount'), currency)} on {transaction.get('processor')}"})
    if transaction.get("processed_at"):
        outcome = transaction.get("status", "")
        if transaction.get("failure_reason"):
            outcome += f": {transaction['failure_reason']}"
        steps.append({"at": str(transaction["processed_at"]), "what": "processor answered", "detail": outcome})
    for refund in transaction.get("refunds") or []:
        steps.append({"at": str(refund.get("created_at") or refund.get("processed_at") or ""),
                      "what": f"refund {refund.get('status', '')}",
                      "detail": money(refund.get("amount"), currency)})
    return sorted(steps, key=lambda step: step["at"])


def owed(balance: Mapping[str, Any]) -> Decimal:
    """Commission accrued and not collected yet: unbilled, pending, failed and overdue."""
    return Decimal(balance["accrued_total"]) - Decimal(balance["collected_total"])


def when(value: Any) -> str:
    """An ISO 8601 time as the pages show it: `2026-12-05 08:34:58 UTC` (to the second); "—" for none."""
    if not value:
        return "—"
    text = str(value).replace("T", " ")
    if text.endswith("Z"):
        text = text[:-1]
    return text.split(".", 1)[0].split("+", 1)[0] + " UTC"


def circuit_states(circuits: Mapping[str, Any] | None) -> dict[int, str]:
    """connection id -> its breaker's state in the router process that answered ("closed" when it
    has none: it never failed there)."""
    if not circuits:
        return {}
    return {c["connection_id"]: c["state"] for c in circuits["items"] if c["connection_id"] is not None}
