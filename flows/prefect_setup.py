"""Prefect configuration for embedded use: ephemeral API, state under KUS_HOME, no analytics.

Must run before `prefect` is imported; respects anything the user has already set (e.g.
PREFECT_API_URL pointing at a real Prefect server, where the same flows run unchanged).

In ephemeral mode Prefect starts a temporary API server as a child process and stops it at exit.
A `kus` killed with SIGKILL cannot stop it, so every server we start carries its owner (pid and
process start time) in its environment, and the next `kus` on the same home stops the servers
whose owner is gone. SIGTERM is turned into a normal exit, so a terminated `kus` stops its own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings

log = logging.getLogger(__name__)

#: Environment variable naming the `kus` process that owns an ephemeral Prefect server: "pid:start".
OWNER_VAR = "KUS_PREFECT_OWNER"
_EPHEMERAL_MARK = "PREFECT__SERVER_EPHEMERAL=1"
_PROC = Path("/proc")


#: The service's own loggers, whose records Prefect forwards to each flow run's logs (the UI shows
#: the edit step's progress, not one line).
SERVICE_LOGGERS = "flows,tasks,editing,validation,infra"


def forward_service_logs() -> None:
    """Before prefect is imported: the service's loggers reach the Prefect run logs."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", SERVICE_LOGGERS)


def configure_prefect(settings: Settings, quiet: bool = False) -> None:
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PREFECT_API_URL"):
        forward_service_logs()  # a real server: its UI shows our lines in each run's logs
    else:  # ephemeral: the server dies with this process and nobody reads its logs; flushing them
        os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")  # to a stopped server stalls the exit
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    stopped = stop_orphaned_servers(Path(os.environ["PREFECT_HOME"]))
    if stopped:
        log.info("stopped %d temporary Prefect server(s) left by a killed kus: pid %s",
                 len(stopped), ", ".join(str(s.pid) for s in stopped))
    owner = _identity(os.getpid())
    if owner is not None:
        os.environ[OWNER_VAR] = owner  # inherited by the server Prefect spawns
    _exit_on_sigterm()


@dataclass(frozen=True)
class OrphanedServer:
    pid: int
    owner: str


def orphaned_servers(prefect_home: Path) -> list[OrphanedServer]:
    """Ephemeral Prefect servers started for `prefect_home` whose owning `kus` no longer runs.

    Linux only (reads /proc); elsewhere the list is empty and Prefect's own exit handler is all.
    """
    found: list[OrphanedServer] = []
    home_mark = f"PREFECT_HOME={prefect_home}"
    for pid, environ in _environments():
        if _EPHEMERAL_MARK not in environ or home_mark not in environ:
            continue
        owner = next((v.split("=", 1)[1] for v in environ if v.startswith(OWNER_VAR + "=")), None)
        if owner is None or _owner_alive(owner):
            continue  # not ours to judge, or its kus still runs
        found.append(OrphanedServer(pid, owner))
    return found


def stop_orphaned_servers(prefect_home: Path, wait_s: float = 5.0) -> list[OrphanedServer]:
    """Terminate (then kill) the servers :func:`orphaned_servers` finds; returns them."""
    servers = orphaned_servers(prefect_home)
    for server in servers:
        _signal(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    for server in servers:
        while _PROC.joinpath(str(server.pid)).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if _PROC.joinpath(str(server.pid)).exists():
            _signal(server.pid, signal.SIGKILL)
    return servers


def _environments() -> Iterator[tuple[int, list[str]]]:
    if not sys.platform.startswith("linux") or not _PROC.is_dir():
        return
    me = os.getpid()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's process
            continue
        yield int(entry.name), raw.decode("utf-8", "replace").split("\0")


def _identity(pid: int) -> str | None:
    """"pid:start-time" (clock ticks since boot): unlike a pid alone, never reused."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    return f"{pid}:{fields[19]}"


def _owner_alive(owner: str) -> bool:
    pid, _, _ = owner.partition(":")
    return pid.isdigit() and _identity(int(pid)) == owner


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


#: Seconds an interrupted `kus` may spend on its way out (marking the run failed, stopping its
#: Prefect server) before it exits regardless: a supervisor's SIGTERM must end the process.
EXIT_GRACE_SECONDS = 30.0

_watchdog_lock = threading.Lock()
_watchdog_armed = threading.Event()
_sigterm_owned = threading.Event()  # set where `kus` itself decides what SIGTERM means (not in a library user)


def arm_exit_watchdog(exit_code: int, grace_s: float | None = None) -> None:
    """Exit with `exit_code` after `grace_s` seconds unless the process has ended by then.

    Cleanup after an interruption runs in the main thread and may wait on something that never comes
    (a lock, a non-daemon thread still computing, a server that does not answer); a daemon timer
    guarantees that an interrupted process still ends. Idempotent: the first call sets the deadline.
    A no-op in a process whose SIGTERM handling is not ours (a test runner, a Prefect worker).
    """
    with _watchdog_lock:
        if _watchdog_armed.is_set() or not _sigterm_owned.is_set():
            return
        _watchdog_armed.set()
    grace_s = EXIT_GRACE_SECONDS if grace_s is None else grace_s

    def expire() -> None:
        time.sleep(grace_s)
        try:
            sys.stderr.write(f"kus: still running {grace_s:.0f} s after it was interrupted; exiting now\n")
            sys.stderr.flush()
        finally:
            os._exit(exit_code)

    threading.Thread(target=expire, name="kus-exit-watchdog", daemon=True).start()


def _on_sigterm(signum: int, frame: object) -> None:
    arm_exit_watchdog(128 + signum)
    sys.exit(128 + signum)


def _exit_on_sigterm() -> None:
    """SIGTERM ends `kus` like Ctrl-C would, so atexit handlers (Prefect's server stop) run, and
    within :data:`EXIT_GRACE_SECONDS` whatever those handlers wait on."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # someone (a worker, a test runner) already decided what SIGTERM means
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_owned.set()
    except ValueError:  # not the main thread
        pass
