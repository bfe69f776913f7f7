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
TARGET_THROUGHPUT_RATIO = 0.70
TARGET_P99_RATIO = 1.5
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
        summary = summarize(self.latencies_ms, self.successes, self.errors, self.end - self.start)
        lags = sorted(self.lags_ms)
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


def compare(ceiling: dict[str, Any], route: dict[str, Any], route_at_rate: dict[str, Any], *,
            rate: float) -> list[dict[str, Any]]:
    """`make load`'s checks as rows: name, measured value, target, passed."""
    throughput = _ratio(route["success_rps"], ceiling["success_rps"])
    p99 = _ratio(route["latency_ms"]["p99"], ceiling["latency_ms"]["p99"])
    p99_rate = route_at_rate["latency_ms"]["p99"]
    rows = [
        ("throughput route / ceiling", throughput, f">= {TARGET_THROUGHPUT_RATIO}",
         throughput is not None and throughput >= TARGET_THROUGHPUT_RATIO),
        ("p99 route / ceiling", p99, f"<= {TARGET_P99_RATIO}", p99 is not None and p99 <= TARGET_P99_RATIO),
        (f"p99 at {rate:g} req/s (ms)", p99_rate, f"< {TARGET_P99_AT_RATE_MS:g}",
         route_at_rate["latency_ms"]["samples"] > 0 and p99_rate < TARGET_P99_AT_RATE_MS),
    ]
    for name, run in (("ceiling", ceiling), ("route", route), (f"route at {rate:g} req/s", route_at_rate)):
        rows.append((f"success rate, {name}", round(run["success_rate"], 5), f">= {MIN_SUCCESS_RATE}",
                     run["requests"] > 0 and run["success_rate"] >= MIN_SUCCESS_RATE))
    return [{"check": n, "value": v, "target": t, "passed": bool(ok)} for n, v, t, ok in rows]
