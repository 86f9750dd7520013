"""The production path README describes, on a real Prefect server with real process workers on
127.0.0.1: `kus deploy` creates the pools and deployments, a worker on `default` (with
KUS_EDIT_DEPLOYMENT=edit-model/gpu) runs the nightly refresh, a worker on `gpu` runs its edit step,
and the run ends awaiting a reviewer's approval, recorded as started by the deployment."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from infra import repository as repo
from infra.context import service_context
from infra.settings import Settings
from tests.test_work_pool import _kill_marked, _wait

ROOT = Path(__file__).resolve().parents[1]


def test_kus_deploy_and_two_process_workers_run_the_nightly_refresh_with_its_edit_on_the_gpu_pool(
        tmp_path: Path, tiny_world, prefect_harness) -> None:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from tests.test_refresh_flow import _apply_swaps

    facts, _templates, report = tiny_world
    api = str(PREFECT_API_URL.value())
    kus_env = {"KUS_HOME": str(tmp_path / "home"), "KUS_BASE_MODEL": str(report.path),
               "KUS_DATABASE_URL": f"sqlite:///{tmp_path / 'kus.db'}", "KUS_DELTA_STORE": (tmp_path / "deltas").as_uri(),
               "KUS_HEARTBEAT": "2", "KUS_WORKER_SILENCE": "120"}
    settings = Settings.load(env=kus_env)
    with service_context(settings) as ctx, ctx.db.session() as session:
        repo.seed_facts(session, facts)
    _apply_swaps(settings)

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUS_", "PREFECT_"))}
    server_env = {**clean, **kus_env, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect-client"),
                  "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    deployed = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], cwd=ROOT, env=server_env,
                              capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "catalogue-refresh/nightly" in deployed.stdout and "edit-model/gpu" in deployed.stdout

    mark = f"KUS_TEST_POOL_WORKERS={uuid.uuid4().hex}"
    worker_env = {**server_env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                  mark.split("=")[0]: mark.split("=")[1]}
    prefect_cli = Path(sys.executable).with_name("prefect")
    logs = {pool: (tmp_path / f"worker-{pool}.log").open("w") for pool in ("default", "gpu")}
    workers = [
        subprocess.Popen([str(prefect_cli), "worker", "start", "--pool", pool, "--type", "process"], cwd=tmp_path,
                         env={**worker_env, **extra}, stdout=logs[pool], stderr=subprocess.STDOUT,
                         start_new_session=True)
        for pool, extra in (("default", {"KUS_EDIT_DEPLOYMENT": "edit-model/gpu"}), ("gpu", {}))
    ]
    try:
        # whoever triggers the deployment cannot choose who is recorded as its starter (a reviewer could then approve it)
        parent = run_deployment("catalogue-refresh/nightly", parameters={"started_by": "alice"}, timeout=0)
        with get_client(sync_client=True) as client:
            def finished():  # noqa: ANN202
                state = client.read_flow_run(parent.id).state
                return state if state is not None and state.is_final() else None

            try:
                state = _wait(finished, 420, every=1.0)  # the nightly refresh finishing on the default pool's worker
            except AssertionError:
                pytest.fail("refresh never finished; worker logs:\n" + "\n".join(
                    f"--- {pool}\n{(tmp_path / f'worker-{pool}.log').read_text()[-3000:]}" for pool in logs))
            assert state.is_completed(), (state.name, state.message)
            assert state.name in ("AwaitingApproval", "ValidationFailed"), state.name
            edit = client.read_deployment_by_name("edit-model/gpu")
            children = [r for r in client.read_flow_runs() if r.deployment_id == edit.id]
            assert len(children) == 1 and children[0].state.is_completed()
            assert children[0].work_pool_name == "gpu"
            parent_run = client.read_flow_run(parent.id)
            assert parent_run.work_pool_name == "default"
            # what the Prefect UI shows a reviewer: the review (changes, knowledge diff, validation) as an artifact
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent.id])))
            [review] = [a for a in artifacts if (a.key or "").endswith("-review")]
            assert "What changes" in str(review.data) and "efficacy_gen" in str(review.data)
    finally:
        _kill_marked(mark)
        for worker in workers:
            worker.wait(timeout=30)
        for fh in logs.values():
            fh.close()

    with service_context(settings) as ctx, ctx.db.session() as session:
        [run] = repo.list_runs(session)
        assert run.status == "awaiting_approval", (run.status, run.error)
        assert run.started_by == "prefect-deployment:nightly"
        assert run.delta_sha and run.flow_run_id == str(parent.id)
