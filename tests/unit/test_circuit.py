"""Circuit breaker state machine."""

from shared.circuit import Circuit, CircuitBoard


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
