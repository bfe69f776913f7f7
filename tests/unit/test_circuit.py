"""Circuit breaker state machine."""

from shared.circuit import Circuit, CircuitBoard, connection_circuit


def test_opens_after_threshold_and_half_opens_after_cool_down():
    c = Circuit(failure_threshold=3, reset_after=10)
    for t in range(2):
        c.record_failure(now=t)
    assert not c.is_open(now=2)
    c.record_failure(now=2)
    assert c.is_open(now=2) and c.is_open(now=11.9)
    assert not c.is_open(now=12)  # half-open: a trial call may go through
    c.record_failure(now=12)  # the trial failed: open again for a full cool-down
    assert c.is_open(now=21)
    c.record_success()
    assert not c.is_open(now=21) and c.failures == 0


def test_success_resets_the_count():
    c = Circuit(failure_threshold=2)
    c.record_failure(now=0)
    c.record_success()
    c.record_failure(now=1)
    assert not c.is_open(now=1)


def test_board_reports_open_processors():
    board = CircuitBoard(failure_threshold=1, reset_after=5)
    board.circuit("square").record_failure(now=100)
    board.circuit("stripe").record_success()
    assert board.open_names(now=101) == frozenset({"square"})
    assert board.open_names(now=106) == frozenset()


def test_a_half_open_circuit_lets_exactly_one_trial_through():
    """After the cool-down one call tries; every other call is refused until it reports."""
    c = Circuit(failure_threshold=1, reset_after=10)
    c.record_failure(now=0)
    assert not c.allow(now=5)  # open
    assert c.allow(now=10)  # half-open: the trial
    assert [c.allow(now=10.1) for _ in range(5)] == [False] * 5  # nobody else while it is out
    assert c.is_open(now=10.1)  # routing sees it as unavailable too
    c.record_success()  # the trial came back: closed
    assert all(c.allow(now=10.2) for _ in range(5))


def test_a_failed_trial_reopens_and_a_lost_one_expires():
    c = Circuit(failure_threshold=1, reset_after=10)
    c.record_failure(now=0)
    assert c.allow(now=10)
    c.record_failure(now=11)  # the trial failed: a new cool-down from now
    assert not c.allow(now=20) and c.allow(now=21)
    # A trial that never reports (its caller died) does not keep the circuit shut forever.
    assert not c.allow(now=25) and c.allow(now=31.5)


def test_circuits_are_per_account_and_the_platform_is_apart():
    from shared.circuit import PLATFORM, connection_circuit

    board = CircuitBoard(failure_threshold=1, reset_after=5)
    board.circuit(connection_circuit(7)).record_failure(now=100)
    assert board.open_connections(now=101) == frozenset({7})
    assert not board.circuit(connection_circuit(8)).is_open(now=101)
    assert not board.circuit(PLATFORM).is_open(now=101)


def test_states_name_each_circuit_closed_open_or_half_open():
    board = CircuitBoard(failure_threshold=2, reset_after=10.0)
    board.circuit("platform").record_failure(0.0)  # one failure: still closed
    broken = board.circuit(connection_circuit(7))
    broken.record_failure(0.0)
    broken.record_failure(1.0)
    assert board.states(5.0) == {"platform": ("closed", 1), "connection:7": ("open", 2)}
    assert board.states(11.0)["connection:7"] == ("half_open", 2)  # cooled down: the next call is a trial
    assert broken.allow(11.0) and board.states(12.0)["connection:7"] == ("open", 2)  # the trial is out
    broken.record_success()
    assert board.states(12.0)["connection:7"] == ("closed", 0)
