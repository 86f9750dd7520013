"""Settings precedence and the scheduled refresh deployment on a real (temporary) Prefect server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from infra.errors import InvalidInput
from infra.settings import DEFAULT_THRESHOLDS, Settings


def test_defaults_config_file_then_env(tmp_path: Path) -> None:
    config = tmp_path / "kus.toml"
    config.write_text('[kus]\nmodel_name = "catalogue-lm"\nreviewers = ["ann", "ben"]\n'
                      '[kus.thresholds]\nefficacy_min = 0.8\n')
    settings = Settings.load(home=tmp_path, env={"KUS_CONFIG": str(config), "KUS_EDITOR": "memit"})
    assert settings.database_url == f"sqlite:///{tmp_path / 'kus.db'}"
    assert settings.delta_store_uri == (tmp_path / "deltas").as_uri()
    assert settings.model_name == "catalogue-lm" and settings.reviewers == ("ann", "ben")
    assert settings.default_editor == "memit"
    assert settings.thresholds["efficacy_min"] == 0.8
    assert settings.thresholds["perplexity_drift_max"] == DEFAULT_THRESHOLDS["perplexity_drift_max"]
    env = {"KUS_CONFIG": str(config), "KUS_REVIEWERS": "cy, dee", "KUS_DATABASE_URL": "postgresql+psycopg2://x@h/db"}
    overridden = Settings.load(home=tmp_path, env=env)
    assert overridden.reviewers == ("cy", "dee") and overridden.database_url.startswith("postgresql")


@pytest.mark.parametrize(
    "text, message",
    [("[kus]\nnot_a_setting = 1\n", "unknown settings"), ("[kus]\nthresholds = {efficacy = 1}\n", "unknown thresholds"),
     ("[kus\n", "not valid TOML")],
)
def test_bad_config_is_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "kus.toml"
    config.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        Settings.load(home=tmp_path, env={"KUS_CONFIG": str(config)})


def test_nightly_refresh_deployment_has_its_cron_schedule(prefect_harness) -> None:
    from prefect.client.orchestration import get_client

    from flows.schedule import DEPLOYMENT_NAME, refresh_deployment

    deployment_id = refresh_deployment(cron="0 2 * * *", editor="ft").apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    deployment = asyncio.run(read())
    assert deployment.name == DEPLOYMENT_NAME
    assert deployment.parameters == {"editor": "ft"}  # who started a run is never a parameter
    crons = [s.schedule.cron for s in deployment.schedules]
    assert crons == ["0 2 * * *"]
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    assert str(deployment.concurrency_options.collision_strategy).endswith("CANCEL_NEW")
    # `kus serve` never takes over the deployment prefect.yaml deploys for a team, and that one runs one at a time too
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["entrypoint"].endswith(":catalogue_refresh"))
    assert nightly["name"] != DEPLOYMENT_NAME and "started_by" not in (nightly.get("parameters") or {})
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_deploy_creates_pools_and_deployments_idempotently(prefect_harness) -> None:
    """`kus deploy`: the default and gpu process pools, the nightly refresh (cron, one at a time, the
    service's logs forwarded) on default and the edit step on gpu; a second deploy changes nothing."""
    from prefect.client.orchestration import get_client

    from flows.schedule import deploy_to_server

    root = Path(__file__).resolve().parents[1]
    first = deploy_to_server(root, cron="0 2 * * *")
    assert deploy_to_server(root, cron="0 2 * * *") == first
    with get_client(sync_client=True) as client:
        assert {client.read_work_pool(name).type for name in ("default", "gpu")} == {"process"}
        nightly = client.read_deployment_by_name("catalogue-refresh/nightly")
        edit = client.read_deployment_by_name("edit-model/gpu")
    assert str(nightly.id) == first["catalogue-refresh/nightly"] and str(edit.id) == first["edit-model/gpu"]
    assert nightly.work_pool_name == "default" and edit.work_pool_name == "gpu"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.global_concurrency_limit.limit == 1 and "started_by" not in nightly.parameters
    for deployment in (nightly, edit):
        assert deployment.job_variables["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"].startswith("flows,tasks")
        assert str(root) in str(deployment.pull_steps)  # workers run this checkout's code
