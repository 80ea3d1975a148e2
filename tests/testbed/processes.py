"""Child processes of the test bed: each in its own process group with its own log file, and bounded waits."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.testbed.binaries import TestbedError

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (the kernel picks them).

    All sockets stay open until every port is picked, so the ports differ from each other.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, indented, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return f"    (cannot read {path}: {e})"
    return "\n".join("    " + line for line in text) or "    (empty)"


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGKILL it when the parent dies, so even a SIGKILLed pytest
    # leaves no control-plane processes behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class ProcessRecord:
    """What `python -m tests.testbed down` needs to stop a process started by an earlier Python process."""

    name: str
    pid: int
    executable: str

    def is_ours(self) -> bool:
        """True if the PID still runs our executable as a group leader (guards against PID reuse)."""
        try:
            argv0 = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
            return argv0 == self.executable and os.getpgid(self.pid) == self.pid
        except (OSError, UnicodeDecodeError):
            return False


class ManagedProcess:
    """One control-plane process: started in a new session (own process group), output in ``log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._stopped = False
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=log.parent,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def record(self) -> ProcessRecord:
        return ProcessRecord(self.name, self.pid, self.argv[0])

    def exit_code(self) -> int | None:
        """None while running."""
        return self._popen.poll()

    def check_running(self) -> None:
        """Raise TestbedError with the log tail if the process has exited."""
        code = self._popen.poll()
        if code is not None:
            raise TestbedError(
                f"{self.name} exited with code {code} (log {self.log}); last lines:\n{log_tail(self.log)}"
            )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds. Idempotent."""
        if self._stopped:
            return  # a second stop must not signal a process group whose ID the kernel may have reused
        self._stopped = True
        stop_group(self.pid, grace, self._popen.poll)
        # Reap the leader (already dead after stop_group, so this does not block).
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies; a group whose members are all zombies is done.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
    return False


def stop_group(pgid: int, grace: float, reap: Callable[[], object] | None = None) -> None:
    """Stop every process in group ``pgid``: SIGTERM, wait up to ``grace`` s, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if reap is not None:
                reap()  # our own child turns into a zombie until reaped
            if not _group_alive(pgid) and not _alive(pgid):
                return
            time.sleep(0.05)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    watch: Sequence[ManagedProcess] = (),
    log: Path | None = None,
) -> T:
    """Call ``probe`` until it returns a non-None value; fail after ``timeout`` seconds.

    ``watch``ed processes that exit fail the wait at once; the error names ``what`` was awaited and shows
    the tail of ``log`` (or of the watched processes' logs).
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        for proc in watch:
            proc.check_running()
        try:
            result = probe()
        except Exception as e:  # any failure of the probe means "not yet"
            result, last_error = None, f"{type(e).__name__}: {e}"
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            logs = [log] if log else [p.log for p in watch]
            tails = "".join(f"\nlast lines of {p}:\n{log_tail(p)}" for p in logs)
            detail = f" (last error: {last_error})" if last_error else ""
            raise TestbedError(f"timed out after {timeout:.0f} s waiting for {what}{detail}{tails}")
        time.sleep(interval)
