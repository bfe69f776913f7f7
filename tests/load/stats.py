"""Pure arithmetic of the load tools: the open-loop timetable, exact percentiles, the run summary,
the pass/fail verdict and the route-versus-ceiling comparison. No I/O, no clock reads.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_SUCCESS_RATE = 0.999
# `make load` targets (issue 3): route/ceiling throughput, route/ceiling p99, p99 at a fixed rate.
TARGET_THROUGHPUT_RATIO = 1.0  # issue 15: /route at least the one-insert ceiling (issue 3 asked 0.70)
TARGET_P99_RATIO = 1.2  # and its p99 within 1.2x the ceiling's (issue 3: 1.5x)
TARGET_P99_AT_RATE_MS = 10.0
CLIENT_OVERLOAD = "client_overload"


def send_offsets(rate: float, duration: float) -> Iterator[float]:
    """Seconds after the start at which an open loop sends: a fixed timetable, i / rate."""
    if rate <= 0 or duration <= 0:
        return
    for i in range(math.ceil(rate * duration)):
        offset = i / rate
        if offset >= duration:
            return
        yield offset


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (p in 0..100); 0.0 when empty."""
    if not ordered:
        return 0.0
    if p <= 0:
        return ordered[0]
    rank = math.ceil(p / 100.0 * len(ordered))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Recorder:
    """Outcomes of requests whose (scheduled) start lies in the measured window [start, end).

    `kind` is None for a success, else the error kind. `latency` is None for requests that were
    never sent (client_overload); every request that was sent has one, whatever its outcome.
    `lag_s` is how late the client itself sent it (open loop): part of the latency, shown apart.
    """

    start: float
    end: float
    latencies_ms: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    successes: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, started: float, latency_s: float | None, kind: str | None, lag_s: float = 0.0) -> None:
        if not self.start <= started < self.end:
            return  # warmup, or started after the window closed
        if latency_s is not None:
            self.latencies_ms.append(latency_s * 1000.0)
            self.lags_ms.append(lag_s * 1000.0)
        if kind is None:
            self.successes += 1
        else:
            self.errors[kind] += 1

    def summary(self) -> dict[str, Any]:
        return combined_summary([self])


def combined_summary(recorders: Sequence[Recorder]) -> dict[str, Any]:
    """One summary of several measured windows (the slices of a side-by-side run): their outcomes
    together over the sum of their lengths."""
    latencies = [ms for r in recorders for ms in r.latencies_ms]
    errors: Counter[str] = Counter()
    for r in recorders:
        errors.update(r.errors)
    summary = summarize(latencies, sum(r.successes for r in recorders), errors,
                        sum(r.end - r.start for r in recorders))
    lags = sorted(ms for r in recorders for ms in r.lags_ms)
    summary["send_lag_ms"] = {f"p{p}": round(percentile(lags, p), 3) for p in (50, 99)}
    summary["send_lag_ms"]["max"] = round(lags[-1], 3) if lags else 0.0
    return summary


def summarize(latencies_ms: Sequence[float], successes: int, errors: Counter[str] | dict[str, int],
              duration_s: float) -> dict[str, Any]:
    requests = successes + sum(errors.values())
    ordered = sorted(latencies_ms)
    return {
        "requests": requests,
        "successes": successes,
        "errors": sum(errors.values()),
        "errors_by_kind": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "success_rate": successes / requests if requests else 0.0,
        "duration_s": round(duration_s, 3),
        "throughput_rps": round(requests / duration_s, 1) if duration_s > 0 else 0.0,
        "success_rps": round(successes / duration_s, 1) if duration_s > 0 else 0.0,
        "latency_ms": {
            "samples": len(ordered),
            "mean": round(sum(ordered) / len(ordered), 3) if ordered else 0.0,
            **{f"p{p}": round(percentile(ordered, p), 3) for p in (50, 95, 99)},
            "max": round(ordered[-1], 3) if ordered else 0.0,
        },
    }


def verdict(summary: dict[str, Any], *, p95_ms: float | None = None,
            min_success_rate: float = MIN_SUCCESS_RATE) -> list[str]:
    """What the run missed; an empty list means it passed."""
    failures = []
    if summary["requests"] == 0:
        failures.append("no requests were measured")
    elif summary["success_rate"] < min_success_rate:
        failures.append(f"success rate {summary['success_rate']:.4%} is under {min_success_rate:.1%}")
    if p95_ms is not None and summary["latency_ms"]["p95"] > p95_ms:
        failures.append(f"p95 {summary['latency_ms']['p95']:.2f} ms is over {p95_ms:g} ms")
    return failures


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None  # None: no baseline, the check fails


# ---- `make bench`: every figure of issue 15 as a check row ------------------------------------------------

PAY_TARGET_RATIO = 0.6
PAY_RATE_P95_MS = 250.0
PAY_RATE_P99_MS = 500.0
LAG_P99_MS = 250.0
IMPORT_TARGET_PER_S = 15_000.0
IMPORT_CATCH_UP_S = 30.0
IDLE_TARGET_PERCENT = 3.0
WEBHOOK_TARGET_RATIO = 0.5

_OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t, "==": lambda v, t: v == t}


def check(name: str, value: float | None, op: str, target: float, note: str = "") -> dict[str, Any]:
    """One figure against its target; a figure that could not be measured (None) fails."""
    passed = value is not None and _OPS[op](value, target)
    return {"check": name, "value": value, "target": f"{op} {target:g}", "passed": bool(passed), "note": note}


def shown(name: str, value: float | None, note: str = "") -> dict[str, Any]:
    """A figure that is only shown beside the checks (a bound, a ratio to explain one): it has no
    target and neither passes nor fails a run."""
    return {"check": name, "value": value, "target": "(shown)", "passed": None, "note": note}


def pay_checks(ceiling: dict[str, Any], pay: dict[str, Any], pay_at_rate: dict[str, Any], *,
               rate: float) -> list[dict[str, Any]]:
    """Route-and-pay against the pay ceiling (same run), and at a fixed rate."""
    errors = pay_at_rate["requests"] - pay_at_rate["successes"]
    latency = pay_at_rate["latency_ms"]
    sent = latency["samples"] > 0
    return [
        check("route-and-pay / pay ceiling, throughput", _ratio(pay["success_rps"], ceiling["success_rps"]),
              ">=", PAY_TARGET_RATIO, f"{pay['success_rps']:.0f} vs {ceiling['success_rps']:.0f} payments/s"),
        check(f"route-and-pay at {rate:g}/s: p95 (ms)", latency["p95"] if sent else None, "<", PAY_RATE_P95_MS),
        check(f"route-and-pay at {rate:g}/s: p99 (ms)", latency["p99"] if sent else None, "<", PAY_RATE_P99_MS),
        check(f"route-and-pay at {rate:g}/s: errors", errors if sent else None, "==", 0,
              ", ".join(f"{k}: {n}" for k, n in pay_at_rate["errors_by_kind"].items())),
    ]


def route_checks(ceiling: dict[str, Any], route: dict[str, Any], route_at_rate: dict[str, Any], *,
                 rate: float) -> list[dict[str, Any]]:
    """`/route` against the one-insert ceiling (same run), and at a fixed rate; each run must also
    have answered at least 99.9 % of its requests."""
    latency = route_at_rate["latency_ms"]
    rates = [check(f"success rate, {name}", round(run["success_rate"], 5) if run["requests"] else None, ">=",
                   MIN_SUCCESS_RATE)
             for name, run in (("ceiling", ceiling), ("/route", route), (f"/route at {rate:g} req/s", route_at_rate))]
    return [
        check("/route / ceiling, throughput", _ratio(route["success_rps"], ceiling["success_rps"]), ">=",
              TARGET_THROUGHPUT_RATIO, f"{route['success_rps']:.0f} vs {ceiling['success_rps']:.0f} req/s"),
        check("/route / ceiling, p99", _ratio(route["latency_ms"]["p99"], ceiling["latency_ms"]["p99"]), "<=",
              TARGET_P99_RATIO, f"{route['latency_ms']['p99']:.1f} vs {ceiling['latency_ms']['p99']:.1f} ms"),
        check(f"/route at {rate:g} req/s: p99 (ms)", latency["p99"] if latency["samples"] else None, "<",
              TARGET_P99_AT_RATE_MS),
        *rates,
    ]


def cpu_percent(ticks_before: dict[int, int], ticks_after: dict[int, int], *, seconds: float,
                ticks_per_second: int) -> float:
    """CPU used by a set of processes over `seconds`, in % of one core, from their utime+stime
    ticks (processes that ended in between count up to their last reading)."""
    used = sum(ticks_after.get(pid, before) - before for pid, before in ticks_before.items())
    used += sum(after for pid, after in ticks_after.items() if pid not in ticks_before)
    return round(100.0 * used / ticks_per_second / seconds, 2)
