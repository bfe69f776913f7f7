"""`make run REPLICAS=N`: ports per replica, names, and the database pool that fits N."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tools.run import (
    EXTRA_CONNECTIONS,
    RESERVED_CONNECTIONS,
    SANDBOX_NOTE_BYTES,
    Child,
    Failure,
    pool_size_for,
    replica_count,
    replica_name,
    replica_ports,
    sandbox_note,
    spawn,
    stop_children,
)


def test_replicas_follow_the_services_port_100_apart_or_take_the_listed_ports():
    assert replica_ports({}, "router", 8001, 1) == [8001]
    assert replica_ports({}, "router", 8001, 3) == [8001, 8101, 8201]
    assert replica_ports({"ROUTER_PORT": "9001"}, "router", 8001, 2) == [9001, 9101]
    assert replica_ports({"ROUTER_PORT": "9001,9500"}, "router", 8001, 2) == [9001, 9500]
    free = replica_ports({"ROUTER_PORT": "0"}, "router", 8001, 2)
    assert len(set(free)) == 2 and all(p > 0 for p in free)
    with pytest.raises(Failure, match="ROUTER_PORT: 3 ports for REPLICAS=2"):
        replica_ports({"ROUTER_PORT": "1,2,3"}, "router", 8001, 2)


def test_one_replica_keeps_the_plain_names():
    assert [replica_name("router", k) for k in (1, 2, 3)] == ["router", "router-2", "router-3"]


@pytest.mark.parametrize("raw", ["0", "-1", "two", "17"])
def test_a_bad_replica_count_stops_the_run_naming_the_setting(raw):
    with pytest.raises(Failure, match="REPLICAS"):
        replica_count({"REPLICAS": raw})


@pytest.mark.parametrize("available", [97, 197, 497])
@pytest.mark.parametrize("processes", [4, 8, 16, 32])
def test_the_pools_of_every_process_fit_in_postgres(available, processes):
    size = pool_size_for(available, processes)
    assert 2 <= size <= 10
    if size > 2:  # at the floor it may not fit: the README says to raise max_connections or use a pooler
        assert processes * (2 * size + EXTRA_CONNECTIONS) <= available - RESERVED_CONNECTIONS


def test_one_replica_on_a_default_postgres_keeps_the_default_pool():
    assert pool_size_for(97, 4) == 10


def test_run_json_is_never_seen_empty_or_half_written_while_it_is_rewritten(tmp_path):
    """Tests poll `.run/run.json` while `make run` rewrites it (after restarting a replica); a
    reader in another process once read it empty (`write_text` truncates first)."""
    import json
    import subprocess
    import sys
    from types import SimpleNamespace

    from tools.run import Suite

    suite = Suite({"RUN_DIR": str(tmp_path)})
    suite.infra = SimpleNamespace(nats_url="nats://127.0.0.1:4222", embedded_postgres=False,
                                  embedded_nats=False, postgres_pid=None, nats_pid=None)
    suite.tokens = {"padding": "x" * 200_000}  # a bigger file: a longer window between truncate and write
    suite.write_state()
    reader = subprocess.Popen([sys.executable, "-c", (
        "import json, sys, time\n"
        "path, bad, end = sys.argv[1], 0, time.monotonic() + 3\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        json.loads(open(path).read())\n"
        "    except ValueError:\n"
        "        bad += 1\n"
        "print(bad)\n"), str(suite.state_file)], stdout=subprocess.PIPE, text=True)
    while reader.poll() is None:
        suite.write_state()
    assert reader.stdout is not None and int(reader.stdout.read()) == 0
    assert json.loads(suite.state_file.read_text())["padding"] == "x" * 200_000
    assert suite.state_file.stat().st_mode & 0o777 == 0o600


# A child that takes argv[1] seconds to stop after SIGTERM, then notes when it stopped in
# `<argv[2]>.stopped`.
SLOW_STOP = """import signal, sys, time
def bye(*_):
    time.sleep(float(sys.argv[1]))
    open(sys.argv[2] + '.stopped', 'w').write(str(time.monotonic()))
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print('up', flush=True)
time.sleep(60)
"""


def started_children(tmp_path: Path, *specs: tuple[str, float, dict]) -> list[Child]:
    """`make run`'s children, one per (name, seconds to stop, spawn options), each up."""
    (tmp_path / "slow_stop.py").write_text(SLOW_STOP)
    children: list[Child] = []
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for name, seconds, options in specs:
        spawn(children, name, ["slow_stop", str(seconds), str(tmp_path / name)], env, tmp_path,
              "http://127.0.0.1:1", **options)
    deadline = time.monotonic() + 15
    while not all(b"up" in (tmp_path / f"{c.name}.log").read_bytes() for c in children):
        assert time.monotonic() < deadline, "the children did not start"
        time.sleep(0.05)
    return children


def test_a_stop_waits_for_each_child_as_long_as_its_own_grace(tmp_path):
    """The simulators write what they were sent when they stop (seconds, after `make bench`): a
    stop gives each child its own grace before SIGKILL, not one deadline for all."""
    # Each takes longer to stop than the other's grace: one deadline for both would fail either.
    patient, hurried = started_children(tmp_path, ("patient", 1.5, {"stop_grace": 10.0}),
                                        ("hurried", 4, {"stop_grace": 0.3}))
    stop_children([patient, hurried])
    assert patient.proc.returncode == 0  # its SIGTERM handler finished
    assert hurried.proc.returncode == -signal.SIGKILL


def test_the_simulators_are_stopped_after_everything_else(tmp_path):
    """A simulator keeps what it was sent when it stops: the services' last calls must be in it."""
    children = started_children(tmp_path, ("sim", 0, {"stops_last": True}), ("service", 1, {}))
    stop_children(children)
    service_done, sim_done = (float((tmp_path / f"{n}.stopped").read_text()) for n in ("service", "sim"))
    assert service_done < sim_done  # the service took a second to stop; the simulator waited for it


def test_a_large_kept_sandbox_is_named_at_start_with_how_to_empty_it(tmp_path: Path):
    """What the simulators keep grows with every `make bench` (1.4 GB after three, 3.6 GB in the
    Stripe simulator's memory once read back); past SANDBOX_NOTE_BYTES `make run` says so."""
    sandbox = tmp_path / "sandbox"
    assert sandbox_note(sandbox) is None  # nothing kept yet
    sandbox.mkdir()
    (sandbox / "stripe.json").write_bytes(b"x" * (SANDBOX_NOTE_BYTES // 2))
    (sandbox / "square.json.partial").write_bytes(b"x" * SANDBOX_NOTE_BYTES)  # not a kept state
    assert sandbox_note(sandbox) is None
    (sandbox / "square.json").write_bytes(b"x" * (SANDBOX_NOTE_BYTES // 2))
    note = sandbox_note(sandbox)
    assert note is not None and str(sandbox) in note and "delete" in note
    assert f"{SANDBOX_NOTE_BYTES / 1e9:.1f} GB" in note
