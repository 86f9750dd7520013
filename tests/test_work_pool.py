"""The edit step on a work pool, on a real Prefect server: when the process running the step is
killed (kill -9, its whole process group), the refresh does not hang. It sees the heartbeat stop,
sets the child flow run Crashed, marks the run failed with the reason within the configured silence,
releases the lease, and the next refresh redoes the changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from infra import repository as repo
from infra.context import service_context
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "edit-model/pool-test"
SERVE = ("from flows.prefect_setup import forward_service_logs; forward_service_logs(); "
         "from flows.edit import edit_model; edit_model.serve(name='pool-test')")
SILENCE = 45  # a worker's flow run process must import torch and load the model before its first beat


def _kill_marked(mark: str) -> int:
    """SIGKILL every process carrying `mark` in its environment: the worker and whatever it spawned,
    whatever their process groups (the machine is gone)."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark.encode() in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def _wait(predicate, timeout: float, every: float = 0.5):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up after {timeout} s")


def test_a_killed_edit_worker_fails_the_refresh_within_the_silence_and_the_next_refresh_redoes_it(
        tmp_path: Path, tiny_world, monkeypatch: pytest.MonkeyPatch, prefect_harness) -> None:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.refresh import catalogue_refresh
    from flows.work_pool import EditStepLost
    from tasks.ingest import ingest_changes
    from tests.test_refresh_flow import _apply_swaps

    facts, _templates, report = tiny_world
    env = {"KUS_HOME": str(tmp_path / "home"), "KUS_BASE_MODEL": str(report.path),
           "KUS_DATABASE_URL": f"sqlite:///{tmp_path / 'kus.db'}", "KUS_DELTA_STORE": (tmp_path / "deltas").as_uri(),
           "KUS_HEARTBEAT": "1", "KUS_WORKER_SILENCE": str(SILENCE), "KUS_USER": "catalogue-bot"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load()
    with service_context(settings) as ctx, ctx.db.session() as session:
        repo.seed_facts(session, facts)
    _apply_swaps(settings)

    mark = f"KUS_TEST_WORKER={uuid.uuid4().hex}"
    worker = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, start_new_session=True,
                              env={**os.environ, **env, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                                   "PYTHONPATH": str(ROOT), mark.split("=")[0]: mark.split("=")[1],
                                   "PREFECT_LOGGING_TO_API_ENABLED": "true"},  # a worker of a real server
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with get_client(sync_client=True) as client:
            def deployed():  # noqa: ANN202
                try:
                    return client.read_deployment_by_name(DEPLOYMENT)
                except Exception:
                    return None

            _wait(deployed, 90)
        monkeypatch.setenv("KUS_EDIT_DEPLOYMENT", DEPLOYMENT)
        killed_at: list[float] = []
        forwarded: list = []  # the service's log records the child run received
        killed: list[int] = []

        def kill_when_editing() -> None:
            """Once the step computes and its own log lines reach the child run's logs, kill -9 its worker."""
            from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(DEPLOYMENT)

                def service_logs():  # noqa: ANN202
                    runs = [r.id for r in client.read_flow_runs() if r.deployment_id == deployment.id]
                    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs))) if runs else []
                    return [e for e in logs if e.name.startswith("tasks.")]

                try:
                    forwarded.extend(_wait(service_logs, 120))
                    time.sleep(2)  # the step is computing and beating
                finally:  # kill in any case: a test that waits for logs that never come must not hang
                    killed.append(_kill_marked(mark))
                    killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill_when_editing, daemon=True)
        killer.start()
        long_edit = {"steps": 100000, "early_stop_loss": 0.0, "layers": [1], "lr": 0.001}
        with pytest.raises(EditStepLost, match="went silent"):  # nobody is left to report the crash
            catalogue_refresh(started_by="carol", hparams=long_edit)
        noticed = time.monotonic()
        killer.join(timeout=5)
        assert killed_at, "the edit step never started on the pool"
        assert killed[0] >= 2  # the serving process and the flow run it started
        assert noticed - killed_at[0] < SILENCE + 20  # not hung: ended within the silence (plus a poll)
    finally:
        _kill_marked(mark)  # nothing of the test's worker outlives it
        worker.wait(timeout=30)

    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            [run] = repo.list_runs(session)
            assert run.status == "failed" and "went silent" in str(run.error)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            [child] = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id]
            assert child.state.is_crashed()
            # the service's own log lines reached the child run's logs (the UI shows the step's progress)
            assert forwarded and all(entry.flow_run_id == child.id for entry in forwarded)
        again = ingest_changes(ctx, settings.model_name, "saul", "catalogue-bot")  # the lease is free
        assert again.run_id != run.id and again.outstanding == 6  # every change is redone
