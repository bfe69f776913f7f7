"""The load tools' pure parts: timetable, percentiles, summary, verdict, comparison and workload."""

from __future__ import annotations

import json
import socket
from collections import Counter

import pytest

from tests.load import stats
from tests.load.loadtest import (
    LoadError,
    amount_text,
    barber_config,
    check_target,
    error_kind,
    is_loopback_host,
    route_body,
)


def test_send_offsets_follow_a_fixed_timetable():
    offsets = list(stats.send_offsets(500, 2.0))
    assert len(offsets) == 1000
    assert offsets[0] == 0.0 and offsets[-1] == pytest.approx(1.998)
    gaps = {round(b - a, 9) for a, b in zip(offsets, offsets[1:])}
    assert gaps == {0.002}


@pytest.mark.parametrize("rate, duration, expected",
                         [(3, 1.0, 3), (3, 1.1, 4), (0.5, 3.0, 2), (0, 5, 0), (10, 0, 0)])
def test_send_offsets_stay_inside_the_duration(rate, duration, expected):
    offsets = list(stats.send_offsets(rate, duration))
    assert len(offsets) == expected
    assert all(o < duration for o in offsets)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 95) == 95
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile(values, 0) == 1
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([], 50) == 0.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0


def test_recorder_drops_warmup_and_late_starts_and_counts_kinds():
    rec = stats.Recorder(start=10.0, end=20.0)
    rec.add(9.99, 0.001, None)  # warmup
    rec.add(20.0, 0.001, None)  # after the window
    for i in range(996):
        rec.add(10.0 + i * 0.01, 0.002, None)
    rec.add(11.0, 0.100, None)
    rec.add(12.0, 5.0, "timeout")
    rec.add(13.0, 0.003, "429 rate_limited")
    rec.add(14.0, None, stats.CLIENT_OVERLOAD)  # never sent: no latency
    s = rec.summary()
    assert s["requests"] == 1000 and s["successes"] == 997 and s["errors"] == 3
    assert s["errors_by_kind"] == {"429 rate_limited": 1, "client_overload": 1, "timeout": 1}
    assert s["success_rate"] == pytest.approx(0.997)
    assert s["throughput_rps"] == 100.0 and s["success_rps"] == 99.7
    lat = s["latency_ms"]
    assert lat["samples"] == 999
    assert lat["p50"] == 2.0 and lat["p99"] == 2.0 and lat["max"] == 5000.0
    json.dumps(s)  # the report is plain JSON


def test_slices_of_a_side_by_side_run_add_up_over_their_own_windows():
    """Two measured slices (5 s and 10 s) with a pause between: throughput is their outcomes over
    15 s, not over the 30 s from the first start to the last end; percentiles over every sample."""
    first, second = stats.Recorder(start=0.0, end=5.0), stats.Recorder(start=20.0, end=30.0)
    for i in range(500):
        first.add(i * 0.01, 0.001, None)
    for i in range(1000):
        second.add(20.0 + i * 0.01, 0.004, None if i % 100 else "timeout")
    s = stats.combined_summary([first, second])
    assert s["requests"] == 1500 and s["successes"] == 1490 and s["errors_by_kind"] == {"timeout": 10}
    assert s["throughput_rps"] == 100.0 and s["success_rps"] == pytest.approx(99.3, abs=0.05)
    assert s["latency_ms"]["samples"] == 1500
    assert s["latency_ms"]["p50"] == 4.0 and s["latency_ms"]["p95"] == 4.0
    assert stats.combined_summary([first])["latency_ms"]["p99"] == 1.0
    assert s["duration_s"] == 15.0


def test_summary_of_nothing_is_zeros():
    s = stats.summarize([], 0, Counter(), 5.0)
    assert s["requests"] == 0 and s["success_rate"] == 0.0 and s["latency_ms"]["p99"] == 0.0
    assert stats.verdict(s) == ["no requests were measured"]


def _summary(successes, errors=0, p95=1.0, p99=2.0, rps=None, duration=10.0):
    errors_by_kind = {"503 unavailable": errors} if errors else {}
    s = stats.summarize([p95] * 95 + [p99] * 5, successes, errors_by_kind, duration)
    if rps is not None:
        s["success_rps"] = rps
    return s


def test_verdict_needs_999_per_mille_and_the_p95_bound():
    assert stats.verdict(_summary(9990, 10)) == []
    assert stats.verdict(_summary(9989, 11))[0].startswith("success rate 99.8900% is under 99.9%")
    assert stats.verdict(_summary(1000, p95=12.0), p95_ms=12.0) == []
    assert stats.verdict(_summary(1000, p95=12.5), p95_ms=12.0) == ["p95 12.50 ms is over 12 ms"]


def test_route_checks_hold_the_issue_targets():
    ceiling = _summary(30_000, p99=40.0, rps=3000.0)
    route = _summary(30_000, p99=48.0, rps=3000.0)
    at_rate = _summary(5000, p99=9.9)
    rows = {r["check"]: r for r in stats.route_checks(ceiling, route, at_rate, rate=500)}
    assert rows["/route / ceiling, throughput"]["value"] == 1.0 and rows["/route / ceiling, throughput"]["passed"]
    assert rows["/route / ceiling, p99"]["value"] == 1.2 and rows["/route / ceiling, p99"]["passed"]
    assert all(r["passed"] for r in rows.values())

    slow = stats.route_checks(ceiling, _summary(29_000, p99=49.0, rps=2990.0), _summary(5000, p99=10.0), rate=500)
    assert [r["check"] for r in slow if not r["passed"]] == [
        "/route / ceiling, throughput", "/route / ceiling, p99", "/route at 500 req/s: p99 (ms)"]


def test_route_checks_fail_without_a_baseline_or_with_errors():
    empty = stats.summarize([], 0, {}, 10.0)
    rows = stats.route_checks(empty, _summary(100), _summary(100, errors=1), rate=500)
    failed = {r["check"] for r in rows if not r["passed"]}
    assert failed == {"/route / ceiling, throughput", "/route / ceiling, p99", "success rate, ceiling",
                      "success rate, /route at 500 req/s"}
    assert next(r for r in rows if r["check"] == "/route / ceiling, throughput")["value"] is None


def test_pay_checks_compare_with_the_pay_ceiling_and_count_every_error():
    ceiling = _summary(3000, rps=300.0)
    rows = {r["check"]: r for r in stats.pay_checks(ceiling, _summary(1800, rps=180.0),
                                                    _summary(12_000, p95=240.0, p99=499.0), rate=400)}
    assert rows["route-and-pay / pay ceiling, throughput"]["value"] == 0.6
    assert all(r["passed"] for r in rows.values())
    rows = {r["check"]: r for r in stats.pay_checks(ceiling, _summary(1790, rps=179.0),
                                                    _summary(11_999, errors=1, p95=250.0, p99=500.0), rate=400)}
    assert not any(r["passed"] for r in rows.values())
    assert rows["route-and-pay at 400/s: errors"]["value"] == 1


def test_a_figure_not_measured_fails():
    assert not stats.check("x", None, ">=", 0.5)["passed"]
    assert stats.check("x", 0.5, ">=", 0.5)["passed"] and not stats.check("x", 3.0, "<", 3.0)["passed"]


def test_cpu_percent_of_one_core_from_ticks():
    # 100 ticks a second; two processes used 30 + 6 ticks in 60 s, a third started and used 4.
    assert stats.cpu_percent({1: 1000, 2: 50}, {1: 1030, 2: 56, 3: 4}, seconds=60, ticks_per_second=100) == 0.67
    assert stats.cpu_percent({1: 10}, {}, seconds=10, ticks_per_second=100) == 0.0  # it ended: nothing counted


def test_workload_bodies_and_configs():
    assert amount_text(500) == "5.00" and amount_text(90_000) == "900.00" and amount_text(1234) == "12.34"
    assert json.loads(route_body(77, 1005)) == {"appointment_id": 77, "amount": "10.05", "currency": "USD"}
    configs = [barber_config(i, 900001 + i) for i in range(60)]
    assert {c["payment_mode"] for c in configs} == {"centralized", "decentralized", "hybrid"}
    for c in configs:
        assert c["fallback_enabled"] and float(c["max_platform_amount"]) > 900
        if c["min_external_amount"] and c["split_threshold"]:
            assert float(c["split_threshold"]) >= float(c["min_external_amount"])
    assert barber_config(5, 900006) == barber_config(5, 900006)


def test_error_kind_reads_the_problem_code():
    assert error_kind(429, b'{"status":429,"code":"rate_limited"}') == "429 rate_limited"
    assert error_kind(502, b"<html>bad gateway</html>") == "502"
    assert error_kind(500, b"[1]") == "500"


def test_only_loopback_targets():
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("[::1]")
    fake = lambda addrs: (lambda host, port: [(socket.AF_INET, 0, 0, "", (a, 0)) for a in addrs])  # noqa: E731
    assert is_loopback_host("localhost", resolve=fake(["127.0.0.1", "::1"]))
    assert not is_loopback_host("example.test", resolve=fake(["127.0.0.1", "10.0.0.5"]))
    assert not is_loopback_host("10.1.2.3")
    check_target("http://127.0.0.1:8000", allow_remote=False)
    with pytest.raises(LoadError, match="not a loopback"):
        check_target("http://10.1.2.3:8000", allow_remote=False)
    check_target("http://10.1.2.3:8000", allow_remote=True)
    with pytest.raises(LoadError):
        check_target("ftp://127.0.0.1", allow_remote=False)
