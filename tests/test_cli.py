"""The console script as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def kus(*args: str, home: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("kus")
    env = dict(os.environ, KUS_HOME=str(home), HF_HUB_OFFLINE="1", **env_vars)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=300)


def test_editors_lists_registered_names_one_per_line(tmp_path: Path) -> None:
    from editing.registry import editor_names

    result = kus("editors", home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines == editor_names() and "ft" in lines


def test_errors_are_one_clear_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    result = kus("--quiet", "show", "42", home=tmp_path)
    assert result.returncode == 1
    assert "not_found" in result.stdout and "42" in result.stdout
    result = kus("--quiet", "rollback", "--reason", "nothing to undo", home=tmp_path)
    assert result.returncode == 1 and "no promoted delta" in result.stdout


def test_read_only_commands_work_while_the_store_is_down(tmp_path: Path) -> None:
    down = {"KUS_DELTA_STORE": "s3://kus-nowhere/deltas", "KUS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    for args in (("runs",), ("audit", "verify"), ("audit", "show")):
        result = kus("--quiet", *args, home=tmp_path, **down)
        assert result.returncode == 0, (args, result.stdout, result.stderr)


def test_no_password_is_ever_printed(tmp_path: Path) -> None:
    """Trust auth ignores the password, so the URL works; it must never be shown."""
    secret = "s3cr3t-pw-do-not-print"
    url = f"postgresql+psycopg2://postgres:{secret}@127.0.0.1:5432/test"
    result = kus("init", home=tmp_path, KUS_DATABASE_URL=url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "postgres:***@127.0.0.1" in result.stdout
    bad = kus("init", home=tmp_path, KUS_DATABASE_URL=f"postgresql+psycopg2://postgres:{secret}@127.0.0.1:1/test")
    assert bad.returncode == 1
    for out in (result.stdout, result.stderr, bad.stdout, bad.stderr):
        assert secret not in out
    assert len(bad.stdout.strip().splitlines()) == 1 and "Traceback" not in bad.stdout + bad.stderr


def test_pickle_weights_are_never_loaded(tmp_path: Path) -> None:
    import pytest
    from transformers import GPT2Config, GPT2LMHeadModel

    from editing.model_io import load_model
    from infra.errors import NotFound

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    import torch

    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: loading it could run code
    with pytest.raises(NotFound, match="safetensors"):
        load_model(tmp_path)


def test_the_demo_runs_two_gated_refreshes_and_prints_agreement(tmp_path: Path) -> None:
    """The main job end to end on the tiny world: two refreshes, each approved (signed) only when its
    retention suite passed and rejected otherwise (exit 3), catalogue agreement printed, audit keyed."""
    result = kus("demo", "--size", "tiny", home=tmp_path, COLUMNS="200")
    out = result.stdout
    assert result.returncode in (0, 3), out[-3000:] + result.stderr[-3000:]
    assert out.count("catalogue agreement") >= 2 and "retention validation" in out
    assert ("approved by demo-reviewer" in out) or ("rejected by demo-reviewer" in out)
    assert "--override-validation" not in out and "override" not in out.lower()
    assert "audit chain verified" in out
    assert (result.returncode == 0) == ("rejects the run" not in out)
    assert (tmp_path / "keys" / "audit.key").is_file() and (tmp_path / "reviewer_keys.json").is_file()


_FLOW_THAT_WAITS = """
import sys, time
from infra.settings import Settings
from flows.prefect_setup import configure_prefect
configure_prefect(Settings.load(), quiet=True)
from prefect import flow

@flow
def waits():
    print("flow running", flush=True)
    for _ in range(1200):  # short sleeps, as real work runs bytecode between steps: a signal that
        time.sleep(0.1)    # lands on another thread is handled at the next one

waits()
"""


def _servers_for(prefect_home: Path) -> list[int]:
    """Pids of running ephemeral Prefect servers started for `prefect_home` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes().decode("utf-8", "replace").split("\0")
            except OSError:
                continue
            if "PREFECT__SERVER_EPHEMERAL=1" in environ and f"PREFECT_HOME={prefect_home}" in environ:
                pids.append(int(entry.name))
    return pids


def _start_waiting_flow(home: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "KUS_PREFECT_OWNER"}
    env.update(KUS_HOME=str(home), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", _FLOW_THAT_WAITS], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None and "flow running" in proc.stdout.readline()
    return proc


def _wait_until(condition, timeout: float = 15.0) -> bool:  # noqa: ANN001 - a callable
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_no_temporary_prefect_server_outlives_its_kus(tmp_path: Path) -> None:
    """A SIGKILLed kus leaves its ephemeral server behind; the next kus on that home stops it.
    A SIGTERMed kus stops its own on the way out."""
    import signal

    from flows.prefect_setup import orphaned_servers

    prefect_home = tmp_path / "prefect"
    killed = _start_waiting_flow(tmp_path)
    servers = _servers_for(prefect_home)
    assert len(servers) == 1 and orphaned_servers(prefect_home) == []  # its owner still runs
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert _wait_until(lambda: [s.pid for s in orphaned_servers(prefect_home)] == servers)
    assert _servers_for(prefect_home) == servers  # left behind, still serving

    result = kus("--quiet", "runs", home=tmp_path, PREFECT_HOME=str(prefect_home))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _wait_until(lambda: _servers_for(prefect_home) == [])

    terminated = _start_waiting_flow(tmp_path)
    assert len(_servers_for(prefect_home)) == 1
    terminated.send_signal(signal.SIGTERM)
    assert terminated.wait(timeout=30) != 0
    assert _wait_until(lambda: _servers_for(prefect_home) == [])


def test_import_facts_streams_keeps_every_refused_row_and_is_all_or_nothing(
    tmp_path: Path, db_url: str, monkeypatch, capsys
) -> None:  # noqa: ANN001 - pytest fixtures
    """Good rows land in the feed; refused ones exit 4, are summarised in the audit event and kept in
    full in a verified store blob; with the store down a file with refused rows imports nothing."""
    import gzip
    import json as jsonlib

    from flows.cli import main
    from infra import repository as repo
    from infra.audit import list_events
    from infra.context import service_context
    from infra.settings import Settings

    monkeypatch.setenv("KUS_HOME", str(tmp_path))
    monkeypatch.setenv("KUS_DATABASE_URL", db_url)
    rows = ["subject,relation,object"] + [f"Gadget {i},price,${i}" for i in range(30)]
    rows += ["Gadget 99,energy_label,A", "Gadget 98,price,", "Gadget 97,colour,red\x1b[31m"]
    facts_file = tmp_path / "facts.csv"
    facts_file.write_text("\n".join(rows) + "\n")

    down = {"KUS_DELTA_STORE": "s3://kus-nowhere/deltas", "KUS_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    with monkeypatch.context() as m:
        for k, v in down.items():
            m.setenv(k, v)
        m.setenv("AWS_ACCESS_KEY_ID", "x")
        m.setenv("AWS_SECRET_ACCESS_KEY", "y")
        assert main(["--quiet", "import-facts", str(facts_file)]) == 1  # the refused rows cannot be kept
    with service_context(Settings.load()) as ctx, ctx.db.session() as session:
        assert repo.changes_since(session, 0, None) == [] and repo.load_facts(session) == []

    capsys.readouterr()
    assert main(["--quiet", "import-facts", str(facts_file)]) == 4
    out = " ".join(capsys.readouterr().out.split())
    assert "30 rows read, 30 facts changed, 3 rows rejected" in out and "line 32" in out
    with service_context(Settings.load()) as ctx:
        with ctx.db.session() as session:
            assert len(repo.changes_since(session, 0, None)) == 30
            event = [e for e in list_events(session) if e.action == "import_facts"][-1]
        assert event.payload["rows_rejected"] == 3 and event.payload["changes"] == 30
        blob = event.payload["rejected_rows"]
        full = [jsonlib.loads(line) for line in gzip.decompress(ctx.store.get_blob(blob["blob"])).splitlines()]
    assert [r["line"] for r in full] == [32, 33, 34]
    assert "unknown relation" in full[0]["reason"] and full[0]["raw"] == "Gadget 99,energy_label,A"

    assert main(["--quiet", "import-facts", str(facts_file)]) == 4  # a second import changes nothing
    with service_context(Settings.load()) as ctx, ctx.db.session() as session:
        assert len(repo.changes_since(session, 0, None)) == 30


def test_seed_catalogue_records_the_base_catalogue_without_feed_rows(tmp_path: Path, db_url: str, monkeypatch,
                                                                      capsys) -> None:  # noqa: ANN001
    """Seeding writes facts, never change rows (nothing for a refresh to edit); the same row checks
    as import (exit 4, refused rows listed); a fact already there refuses the whole file; a change
    imported afterwards is a change against the seeded value."""
    from flows.cli import main
    from infra import repository as repo
    from infra.audit import list_events
    from infra.context import service_context
    from infra.settings import Settings

    monkeypatch.setenv("KUS_HOME", str(tmp_path))
    monkeypatch.setenv("KUS_DATABASE_URL", db_url)
    rows = ["subject,relation,object"] + [f"Gadget {i},price,${i}" for i in range(20)] + ["Gadget 99,energy_label,A"]
    seed = tmp_path / "catalogue.csv"
    seed.write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["--quiet", "seed-catalogue", str(seed)]) == 4
    out = " ".join(capsys.readouterr().out.split())
    assert "20 rows read, 20 facts seeded, 1 rows rejected" in out and "line 22" in out
    with service_context(Settings.load()) as ctx, ctx.db.session() as session:
        assert len(repo.load_facts(session)) == 20
        assert repo.changes_since(session, 0, None) == []  # nothing for a refresh to edit
        assert repo.ledger(session) == []
        event = [e for e in list_events(session) if e.action == "seed_catalogue"][-1]
        assert event.payload["facts_seeded"] == 20 and event.payload["rows_rejected"] == 1

    again = tmp_path / "again.csv"
    again.write_text("subject,relation,object\nGadget 500,price,$5\nGadget 3,price,$300\n")
    assert main(["--quiet", "seed-catalogue", str(again)]) != 0  # Gadget 3 exists: all or nothing
    with service_context(Settings.load()) as ctx, ctx.db.session() as session:
        assert len(repo.load_facts(session)) == 20

    change = tmp_path / "change.csv"
    change.write_text("subject,relation,object\nGadget 3,price,$300\n")
    assert main(["--quiet", "import-facts", str(change)]) == 0
    with service_context(Settings.load()) as ctx, ctx.db.session() as session:
        [entry] = repo.ledger(session)
        assert (entry.subject, entry.value, entry.base) == ("Gadget 3", "$300", "$3")


def test_doctor_says_how_much_of_the_catalogue_the_base_model_knows(tmp_path: Path, tiny_world, monkeypatch,
                                                                    capsys) -> None:  # noqa: ANN001
    """Ready (exit 0) for the catalogue the model was built on with the user's own files configured;
    not ready (exit 5, with the reason) for a catalogue it never saw, or with a non-demo model left
    on the demo's templates, held-out text and statistics corpus."""
    from flows.cli import main
    from infra import repository as repo
    from infra.context import service_context
    from infra.demo.catalogue import demo_templates_path, generate_catalogue
    from infra.settings import Settings

    facts, _templates, report = tiny_world
    text = tmp_path / "text.txt"
    text.write_text("A plain sentence about kitchens.\nAnother one about lamps.\n")

    def home(name: str, catalogue: list) -> None:  # noqa: ANN001
        monkeypatch.setenv("KUS_HOME", str(tmp_path / name))
        monkeypatch.setenv("KUS_BASE_MODEL", str(report.path))
        with service_context(Settings.load()) as ctx, ctx.db.session() as session:
            repo.seed_facts(session, catalogue)

    home("unconfigured", facts)
    capsys.readouterr()
    assert main(["--quiet", "doctor"]) == 5
    out = " ".join(capsys.readouterr().out.split())
    assert "KUS_TEMPLATES is not set" in out and "KUS_HELDOUT_TEXT is not set" in out

    monkeypatch.setenv("KUS_TEMPLATES", str(demo_templates_path()))
    monkeypatch.setenv("KUS_HELDOUT_TEXT", str(text))
    monkeypatch.setenv("KUS_STATS_CORPUS", str(text))
    home("known", facts)
    assert main(["--quiet", "doctor"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ready: the base model knows" in out and "price" in out

    home("unknown", generate_catalogue(n_products=30, seed=7))  # products the tiny model never saw
    assert main(["--quiet", "doctor"]) == 5
    out = " ".join(capsys.readouterr().out.split())
    assert "not ready: the base model answers only" in out


def test_answers_print_on_one_line_and_runs_never_cut_values(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from flows.cli import _one_line, main
    from infra import repository as repo
    from infra.context import service_context
    from infra.settings import Settings

    assert _one_line("Acme\nSee also:\tB \x1b[31m é") == "Acme\\nSee also:\\tB \\x1b[31m é"
    monkeypatch.setenv("KUS_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "60")
    with service_context(Settings.load()) as ctx, ctx.db.session() as session:
        repo.create_run(session, "demo", "alphaedit,saul", "catalogue-scheduler-nightly", 0, 12345)
    capsys.readouterr()
    assert main(["--quiet", "runs"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "..." not in out


def test_sigterm_ends_kus_even_when_its_cleanup_waits_forever(tmp_path: Path) -> None:
    """A SIGTERMed `kus` whose way out blocks (here: a non-daemon thread the interpreter joins at exit)
    still ends, with 143, after the grace period, and says why on stderr."""
    import time

    script = (
        "import os, signal, threading, time\n"
        "from flows import prefect_setup\n"
        "prefect_setup._exit_on_sigterm()\n"
        "prefect_setup.EXIT_GRACE_SECONDS = 1.0\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()  # never joined in time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(600)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert time.monotonic() - started < 60
    assert "after it was interrupted; exiting now" in done.stderr


def test_sigterm_ends_a_refresh_promptly_marks_it_failed_and_frees_the_model(tmp_path: Path, tiny_world) -> None:  # noqa: ANN001
    """`kus refresh` terminated mid-edit exits within seconds, its run is failed with the true reason
    (interrupted, not a connection error), the lease is released and the next refresh redoes the changes."""
    import signal
    import time

    from infra import repository as repo
    from infra.context import service_context
    from infra.settings import Settings
    from tasks.ingest import ingest_changes
    from tests.test_refresh_flow import _apply_swaps

    facts, _templates, report = tiny_world
    env = {"KUS_HOME": str(tmp_path), "KUS_BASE_MODEL": str(report.path), "KUS_USER": "catalogue-bot"}
    settings = Settings.load(home=tmp_path, base_model_path=report.path)
    with service_context(settings) as ctx, ctx.db.session() as session:
        repo.seed_facts(session, facts)
    _apply_swaps(settings)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KUS_"))}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "--quiet", "refresh", "--hparams",
                             '{"steps": 100000, "early_stop_loss": 0.0, "layers": [1]}'],
                            env={**clean, **env, "HF_HUB_OFFLINE": "1"}, cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "refresh.stderr").open("w"))
    try:
        def editing() -> bool:
            with service_context(settings) as ctx, ctx.db.session() as session:
                runs = repo.list_runs(session)
                return bool(runs) and any(e.action == "build_sets" for e in _events(session))

        assert _wait_until(editing, timeout=120), "the refresh never reached its edit step"
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert proc.wait(timeout=150) != 0, (tmp_path / "refresh.stderr").read_text()[-3000:]
        print(f"exited {time.monotonic() - stopped:.1f} s after SIGTERM")
        assert time.monotonic() - stopped < 60  # 4 s here when idle; the lease TTL it replaces is 2 hours
    finally:
        if proc.poll() is None:
            proc.kill()
    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            [run] = repo.list_runs(session)
        assert run.status == "failed" and str(run.error).startswith("interrupted"), run.error
        again = ingest_changes(ctx, settings.model_name, "saul", "catalogue-bot")  # no lease left to wait for
        assert again.run_id != run.id and again.outstanding == 6


def _events(session):  # noqa: ANN001, ANN202
    from infra.audit import list_events

    return list_events(session)
