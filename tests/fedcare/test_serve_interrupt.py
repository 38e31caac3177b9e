"""A SIGINT that arrives the moment a server's port opens (a supervisor stopping it at once) stops the
server cleanly and exits 0, instead of escaping before the serve loop could catch it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import os, signal, socket, sys
    from pathlib import Path
    from coordinator.server import Coordinator, CoordinatorConfig
    from fedcare.commands.common import serve_until_interrupted

    state = Path(sys.argv[1])
    started = []

    def start():
        coordinator = Coordinator(CoordinatorConfig(insecure=True, listen="127.0.0.1:0", state_dir=state)).start()
        started.append(coordinator)
        os.kill(os.getpid(), signal.SIGINT)  # the port is open: the supervisor's stop signal comes now
        return coordinator

    serve_until_interrupted(start, "127.0.0.1:0")
    port = started[0].port
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        print("still serving on", port)
        sys.exit(3)
    except OSError:
        print("stopped cleanly")
""")


def test_an_interrupt_during_start_stops_the_server_and_exits_zero(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stopped cleanly" in proc.stdout and "Traceback" not in proc.stderr


def test_the_coordinator_stops_on_sigint_even_when_its_parent_ignored_it(tmp_path: Path) -> None:
    """A supervisor or shell that ignores SIGINT passes that on to its children; the unit's KillSignal must still work."""
    import signal

    from fedcare.demo import free_port

    for _ in range(3):  # a free port may be taken by another test's server before the coordinator binds it
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "fedcare", "coordinator", "serve", "--insecure", "--listen",
                                 f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        if _ready(proc, port):
            break
        output = proc.communicate(timeout=60)[0]
        assert "already in use" in output, output[-2000:]  # anything else is a coordinator that failed to start
    else:
        raise AssertionError("three free ports in a row were taken before the coordinator bound them")
    try:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-2000:]


def _ready(proc: subprocess.Popen, port: int, timeout_s: float = 120.0) -> bool:
    """Whether the coordinator answers on `port`; False as soon as its process has exited."""
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return True
            except grpc.FutureTimeoutError:
                continue
        raise AssertionError(f"the coordinator did not answer on port {port} within {timeout_s:.0f} s")
    finally:
        channel.close()
