#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv on first use (or when pyproject.toml changes),
# then runs what you ask for.
#   ./dev.sh demo            the main job on embedded defaults (SQLite, local delta store, Prefect ephemeral)
#   ./dev.sh test [ARGS]     the test suite (starts the local PostgreSQL if it is down)
#   ./dev.sh bench NAME      a benchmark script from bench/
#   ./dev.sh kus ARGS        any CLI command, e.g. ./dev.sh kus runs
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/kus ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setting up .venv (first run only; a few minutes)..." >&2
  "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false GX_ANALYTICS_ENABLED=false
export PREFECT_SERVER_ANALYTICS_ENABLED=false

start_postgres() {
  if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting the local PostgreSQL server..." >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
}

ensure_chromium() {  # the audit report and GX Data Docs tests open their pages in headless Chromium
  if ! command -v chromium >/dev/null; then
    echo "installing Debian's chromium for the page tests..." >&2
    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
      || echo "could not install chromium: tests/test_audit_report.py and tests/test_gx_docs.py will fail" >&2
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  demo) exec .venv/bin/kus demo "$@" ;;
  test) start_postgres; ensure_chromium; exec .venv/bin/python -m pytest "$@" ;;
  bench) name=$1; shift; exec .venv/bin/python "bench/$name.py" "$@" ;;
  kus) exec .venv/bin/kus "$@" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
