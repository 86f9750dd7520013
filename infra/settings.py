"""Service settings: embedded defaults, overridden by a TOML config file, overridden by env vars.

Usage::

    settings = Settings.load()            # ./kus.toml if present, then KUS_* env vars
    settings = Settings.load(home=tmp)    # tests: everything under one directory

Env vars: KUS_HOME, KUS_CONFIG, KUS_DATABASE_URL, KUS_DELTA_STORE (file:///dir or s3://bucket/prefix),
KUS_S3_ENDPOINT_URL, KUS_S3_CHECKSUMS (when_required|when_supported), KUS_MODEL_NAME, KUS_BASE_MODEL,
KUS_EDITOR (an editor or a comma-separated plan), KUS_EDIT_MODE (auto|sequential|cumulative),
KUS_EDIT_DEPLOYMENT (run the edit step on a work pool), KUS_REVIEWERS (comma separated),
KUS_TEMPLATES (relation templates YAML/JSON), KUS_HELDOUT_TEXT (one sentence per line, for
perplexity drift), KUS_STATS_CORPUS (generic text, one per line), KUS_AGREEMENT_SAMPLE,
KUS_DEVICE_MAP and KUS_TORCH_DTYPE (how the model is loaded: sharded over GPUs, in another dtype).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from infra.errors import InvalidInput

#: Retention thresholds checked by the GX retention suite (fractions in [0, 1], drift as a ratio).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "efficacy_min": 0.9,
    "paraphrase_min": 0.6,
    "neighbourhood_min": 0.9,
    "unrelated_retention_min": 0.95,
    "perplexity_drift_max": 0.10,
    "fluency_drop_max": 0.10,
    #: catalogue agreement: changed facts the live model answers with their database value ...
    "agreement_changed_min": 0.90,
    #: ... and unchanged facts the base model answered right that it still answers right
    "unchanged_kept_min": 0.95,
}

#: How a refresh edits: "sequential" (this run's changes on top of the live model), "cumulative"
#: (one delta from the base model over every change since it, reusing per-fact work), or "auto"
#: (cumulative when the first editor of the plan prefers it: the locate-and-edit family).
EDIT_MODES = ("auto", "sequential", "cumulative")


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to find its database, stores and model."""

    home: Path
    database_url: str
    delta_store_uri: str
    s3_endpoint_url: str | None = None
    s3_checksums: str = "when_required"
    model_name: str = "demo"
    base_model_path: Path | None = None
    templates_path: Path | None = None
    heldout_text_path: Path | None = None
    #: The editor plan: one editor, or several comma-separated ("alphaedit,saul"): each later editor
    #: writes what the ones before it could not. SAUL: on the demo catalogue it writes every change
    #: and keeps unrelated facts (bench/results/refresh_sequence.md).
    default_editor: str = "saul"
    edit_mode: str = "auto"
    #: generic text (one text per line) for key statistics and regularisers; never the held-out text.
    #: None: the demo's generic catalogue sentences for the demo world, else required by editors that need it.
    stats_corpus_path: Path | None = None
    #: unchanged facts sampled (stratified by relation) for catalogue agreement; every changed fact is scored
    agreement_sample: int = 1000
    #: the most facts one refresh edits; the rest stay outstanding (in feed order) for the next refreshes
    max_targets: int = 500
    #: when a greedy answer states a database value: auto | exact | leading (validation/answer_match.py)
    answer_match: str = "auto"
    #: how the model is placed: "" (one device: the GPU if there is one, else the CPU), a strategy of
    #: transformers/accelerate ("auto", "balanced", "balanced_low_0", "sequential": a model larger than one
    #: GPU is sharded over all of them), one device ("cpu", "cuda:1") or a JSON object {module: device}
    device_map: str = ""
    #: the dtype weights are loaded in: "" (as saved), float32, bfloat16 or float16. Deltas are tied to the
    #: weights they were computed on: another dtype is another base (its fingerprint differs)
    torch_dtype: str = ""
    #: Prefect deployment that runs the edit step on a GPU work pool ("edit-model/gpu"); None = in process.
    edit_deployment: str | None = None
    reviewers: tuple[str, ...] = ("demo-reviewer",)
    #: the acting reviewer's own Ed25519 private key (PEM); approvals are signed with it
    signing_key_path: Path | None = None
    #: registered reviewers' public keys (JSON {"name": "base64"}); default $KUS_HOME/reviewer_keys.json
    reviewer_keys_path: Path | None = None
    #: seconds a refresh's lease lasts without renewal (every step renews it); a crashed run is
    #: declared dead only after its lease expired
    lease_ttl_seconds: int = 7200
    #: the edit step on a work pool renews the lease this often while it computes (its heartbeat) ...
    heartbeat_seconds: int = 30
    #: ... and the refresh declares its worker lost after this long without one (or without a worker
    #: picking the step up), and gives up on the step after `edit_timeout_seconds` in any case
    worker_silence_seconds: int = 300
    edit_timeout_seconds: int = 6 * 3600
    #: write-once storage for audit anchors: s3://bucket[/prefix] (a bucket with Object Lock) or
    #: file:///dir; None: `kus audit anchor` writes to the delta store and a file only
    anchor_store_uri: str | None = None
    #: days an anchor stays locked (S3 Object Lock retention), and the lock mode
    anchor_retention_days: int = 2555
    anchor_lock_mode: str = "COMPLIANCE"
    #: file holding the secret that keys the audit trail (HMAC); default $KUS_HOME/keys/audit.key when it
    #: exists. Keep it outside the database (a mounted secret): whoever holds only the database cannot
    #: rewrite history and recompute the chain.
    audit_key_path: Path | None = None
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    @property
    def model_path(self) -> Path:
        return self.base_model_path or self.home / "models" / self.model_name

    @property
    def audit_key_file(self) -> Path:
        return self.audit_key_path or self.home / "keys" / "audit.key"

    def audit_key(self) -> bytes | None:
        """The audit secret's bytes, or None when none is configured (the chain is then unkeyed)."""
        path = self.audit_key_file
        if not path.is_file():
            if self.audit_key_path is not None:
                raise InvalidInput(f"audit key file {path} does not exist")
            return None
        key = path.read_bytes().strip()
        if len(key) < 32:
            raise InvalidInput(f"audit key in {path} is shorter than 32 bytes")
        return key

    @property
    def reviewer_keys_file(self) -> Path:
        return self.reviewer_keys_path or self.home / "reviewer_keys.json"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @classmethod
    def load(cls, home: Path | str | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from defaults, the config file and the environment (in that order)."""
        env = os.environ if env is None else env
        home_path = Path(home or env.get("KUS_HOME") or Path.cwd() / "var").resolve()
        values: dict[str, Any] = {
            "home": home_path,
            "database_url": f"sqlite:///{home_path / 'kus.db'}",
            "delta_store_uri": (home_path / "deltas").as_uri(),
        }
        config_path = Path(env.get("KUS_CONFIG", "kus.toml"))
        if config_path.is_file():
            values.update(_read_config(config_path))
        env_map = {
            "KUS_DATABASE_URL": "database_url",
            "KUS_DELTA_STORE": "delta_store_uri",
            "KUS_S3_ENDPOINT_URL": "s3_endpoint_url",
            "KUS_S3_CHECKSUMS": "s3_checksums",
            "KUS_MODEL_NAME": "model_name",
            "KUS_BASE_MODEL": "base_model_path",
            "KUS_TEMPLATES": "templates_path",
            "KUS_HELDOUT_TEXT": "heldout_text_path",
            "KUS_EDITOR": "default_editor",
            "KUS_EDIT_DEPLOYMENT": "edit_deployment",
            "KUS_REVIEWERS": "reviewers",
            "KUS_EDIT_MODE": "edit_mode",
            "KUS_STATS_CORPUS": "stats_corpus_path",
            "KUS_AGREEMENT_SAMPLE": "agreement_sample",
            "KUS_MAX_TARGETS": "max_targets",
            "KUS_ANSWER_MATCH": "answer_match",
            "KUS_DEVICE_MAP": "device_map",
            "KUS_TORCH_DTYPE": "torch_dtype",
            "KUS_SIGNING_KEY": "signing_key_path",
            "KUS_LEASE_TTL": "lease_ttl_seconds",
            "KUS_HEARTBEAT": "heartbeat_seconds",
            "KUS_WORKER_SILENCE": "worker_silence_seconds",
            "KUS_EDIT_TIMEOUT": "edit_timeout_seconds",
            "KUS_AUDIT_KEY_FILE": "audit_key_path",
            "KUS_REVIEWER_KEYS": "reviewer_keys_path",
            "KUS_ANCHOR_STORE": "anchor_store_uri",
            "KUS_ANCHOR_RETENTION_DAYS": "anchor_retention_days",
            "KUS_ANCHOR_LOCK_MODE": "anchor_lock_mode",
        }
        for var, key in env_map.items():
            if env.get(var):
                values[key] = env[var]
        values.update(overrides)
        return cls(**_coerce(values))

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **_coerce(changes))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from exc
    section = data.get("kus", data)
    known = set(Settings.__dataclass_fields__)
    unknown = set(section) - known
    if unknown:
        raise InvalidInput(f"config file {path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
    return dict(section)


#: Settings that are whole numbers, with their smallest allowed value.
_WHOLE_NUMBERS = {"lease_ttl_seconds": 1, "agreement_sample": 0, "max_targets": 1, "anchor_retention_days": 1,
                  "heartbeat_seconds": 1, "worker_silence_seconds": 1, "edit_timeout_seconds": 1}


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for key in ("home", "base_model_path", "templates_path", "heldout_text_path", "stats_corpus_path", "signing_key_path",
                "reviewer_keys_path", "audit_key_path"):
        if isinstance(out.get(key), str):
            out[key] = Path(out[key])
    if isinstance(out.get("reviewers"), str):
        out["reviewers"] = tuple(r.strip() for r in out["reviewers"].split(",") if r.strip())
    elif isinstance(out.get("reviewers"), list):
        out["reviewers"] = tuple(out["reviewers"])
    if "thresholds" in out:
        merged = dict(DEFAULT_THRESHOLDS)
        unknown = set(out["thresholds"]) - set(DEFAULT_THRESHOLDS)
        if unknown:
            raise InvalidInput(f"unknown thresholds {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}")
        merged.update({k: float(v) for k, v in out["thresholds"].items()})
        out["thresholds"] = merged
    for name, minimum in _WHOLE_NUMBERS.items():
        if name not in out:
            continue
        try:
            out[name] = int(out[name])
        except (TypeError, ValueError):
            raise InvalidInput(f"{name} must be a whole number, got {out[name]!r}") from None
        if out[name] < minimum:
            raise InvalidInput(f"{name} must be >= {minimum}")
    if out.get("anchor_lock_mode") is not None and out["anchor_lock_mode"] not in ("COMPLIANCE", "GOVERNANCE"):
        raise InvalidInput(f"anchor_lock_mode must be COMPLIANCE or GOVERNANCE, got {out['anchor_lock_mode']!r}")
    if out.get("answer_match") is not None and out["answer_match"] not in ("auto", "exact", "leading"):
        raise InvalidInput(f"answer_match must be auto, exact or leading, got {out['answer_match']!r}")
    if out.get("torch_dtype") not in (None, *TORCH_DTYPES):
        raise InvalidInput(f"torch_dtype must be one of {[d for d in TORCH_DTYPES if d]} (or empty), "
                           f"got {out['torch_dtype']!r}")
    if out.get("device_map"):
        out["device_map"] = _checked_device_map(str(out["device_map"]))
    if out.get("edit_mode") is not None and out["edit_mode"] not in EDIT_MODES:
        raise InvalidInput(f"edit_mode must be one of {EDIT_MODES}, got {out['edit_mode']!r}")
    if out.get("s3_checksums") not in (None, "when_required", "when_supported"):
        raise InvalidInput("s3_checksums must be 'when_required' or 'when_supported'")
    return out


TORCH_DTYPES = ("", "float32", "bfloat16", "float16")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _checked_device_map(text: str) -> str:
    """A device map as transformers takes it: a strategy, one device, or a JSON object of module -> device."""
    import json
    import re

    text = text.strip()
    if text in DEVICE_MAP_STRATEGIES or re.fullmatch(r"cpu|cuda(:\d+)?|\d+", text):
        return text
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(k, str) and (isinstance(v, int) or (isinstance(v, str) and re.fullmatch(r"cpu|cuda(:\d+)?", v)))
            for k, v in mapping.items()):
        raise InvalidInput(f"device_map must be one of {list(DEVICE_MAP_STRATEGIES)}, a device (cpu, cuda:0) or a JSON "
                           f"object of module name -> device (GPU index, 'cuda:N' or 'cpu'), got {text!r}")
    return text
