"""The restart policy of a worker slot, driven by a Clock; the supervisor's give-up with real failing workers."""

from __future__ import annotations

import socket
import sys

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from pystrands.broker import BrokerConfig
from pystrands.broker.workers import RestartPolicy, WorkersFailed, WorkerSlot, WorkerSupervisor

POLICY = RestartPolicy(first_delay=0.5, max_delay=4.0, stable_after=30.0, max_start_failures=3)


def run(slot: WorkerSlot, clock: Clock, seconds: float, listened: bool = True) -> float | None:
    """One run of ``seconds`` (listening first, or not), and the delay the slot asks for after it."""
    slot.started(1234)
    if listened:
        slot.listening()
    clock.advance(seconds)
    return slot.ended()


def test_the_delay_doubles_while_a_worker_keeps_dying_up_to_the_cap() -> None:
    clock = Clock()
    slot = WorkerSlot(1, POLICY, clock)
    assert [run(slot, clock, 1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_worker_that_ran_long_enough_starts_again_after_the_first_delay() -> None:
    clock = Clock()
    slot = WorkerSlot(1, POLICY, clock)
    assert [run(slot, clock, 1.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert run(slot, clock, 30.0) == 0.5
    assert run(slot, clock, 29.9) == 1.0


def test_deaths_before_listening_give_up_at_the_limit() -> None:
    clock = Clock()
    slot = WorkerSlot(1, POLICY, clock)
    assert run(slot, clock, 0.1, listened=False) == 0.5
    assert run(slot, clock, 0.1, listened=False) == 1.0
    assert run(slot, clock, 0.1, listened=False) is None


def test_a_run_that_listened_resets_the_count_of_deaths_before_listening() -> None:
    clock = Clock()
    slot = WorkerSlot(1, POLICY, clock)
    assert run(slot, clock, 0.1, listened=False) == 0.5
    assert run(slot, clock, 0.1, listened=False) == 1.0
    assert run(slot, clock, 0.1) == 2.0
    assert run(slot, clock, 0.1, listened=False) == 4.0
    assert run(slot, clock, 0.1, listened=False) == 4.0
    assert run(slot, clock, 0.1, listened=False) is None


def test_the_slot_keeps_the_pid_of_its_last_run() -> None:
    slot = WorkerSlot(2, POLICY, Clock())
    slot.started(4321)
    slot.ended()
    assert (slot.number, slot.pid, slot.ready) == (2, 4321, False)


@pytest.mark.parametrize(("options", "error"), [
    ({"first_delay": -1}, "first_delay must be a finite number >= 0, not -1"),
    ({"first_delay": 2.0, "max_delay": 1.0}, "max_delay must be a finite number >= 2.0, not 1.0"),
    ({"stable_after": 0}, "stable_after must be a finite number > 0, not 0"),
    ({"max_start_failures": 0}, "max_start_failures must be >= 1, not 0"),
    ({"start_timeout": 0}, "start_timeout must be a finite number > 0, not 0"),
])
def test_a_nonsense_policy_is_refused(options: dict[str, float], error: str) -> None:
    with pytest.raises(ValueError) as refused:
        RestartPolicy(**options)
    assert str(refused.value) == error


def test_the_supervisor_refuses_what_is_not_a_config_or_a_list_of_str() -> None:
    with pytest.raises(TypeError, match="config must be a BrokerConfig, not dict"):
        WorkerSupervisor({"workers": 2}, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="arguments must be a list of str"):
        WorkerSupervisor(BrokerConfig(), "--queue-size 10")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 257, "2", True, 1.5])
def test_a_nonsense_worker_count_is_refused_by_the_config(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match=r"^workers must be"):
        BrokerConfig(workers=bad, redis="redis://127.0.0.1:6379")  # type: ignore[arg-type]


def test_workers_need_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ValueError, match=r"^workers must be 1 on darwin: several workers share the ports through"
                                         r" SO_REUSEPORT's load balancing, which only Linux has$"):
        BrokerConfig(workers=2, redis="redis://127.0.0.1:6379")


@pytest_twisted.ensureDeferred
async def test_workers_that_keep_failing_at_start_make_the_supervisor_give_up(redis_url: str) -> None:
    from twisted.internet import reactor

    config = BrokerConfig(workers=2, redis=redis_url, ws_port=0, tcp_port=0)
    policy = RestartPolicy(first_delay=0.01, max_start_failures=2)
    supervisor = WorkerSupervisor(config, ["--no-such-option"], reactor, policy)
    supervisor.startService()
    ws_port = supervisor.ports[0]
    with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
        other.bind(("", ws_port))  # held: no other program takes the port while workers restart
    with pytest.raises(WorkersFailed, match=r"^worker [12] \(pid \d+\) ended \(exit status 2\) 2 times in a row"
                                            r" before listening$"):
        await supervisor.failed
    assert not supervisor.ready.called
    await supervisor.stopService()
    with socket.socket() as again:  # the supervisor let go of the ports it held
        again.bind(("", ws_port))


class NeverListens(WorkerSupervisor):
    """Workers that start and never listen (a real process that only sleeps), as a hung start would."""

    def worker_command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest_twisted.ensureDeferred
async def test_a_worker_that_never_listens_is_killed_and_counts_as_a_failed_start() -> None:
    from twisted.internet import reactor

    policy = RestartPolicy(first_delay=0.01, max_start_failures=2, start_timeout=0.3)
    supervisor = NeverListens(BrokerConfig(workers=1, ws_port=0, tcp_port=0), [], reactor, policy)
    supervisor.startService()
    with pytest.raises(WorkersFailed, match=r"^worker 1 \(pid \d+\) ended \(killed by SIGKILL\) 2 times in a row"
                                            r" before listening$"):
        await supervisor.failed
    await supervisor.stopService()
    assert all(slot.process is None for slot in supervisor.slots)
