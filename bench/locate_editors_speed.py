"""Speed and memory of the locate-and-edit editors: sequential batches, split by phase.

One editor per process (so peak memory belongs to it), `--edits` requests applied in batches of
`--batch`, each batch computed on the model carrying the earlier ones, as the service chains deltas.
Per batch the seconds are split into

- statistics:  the key second moments (computed once per base model and layer, then read from the cache),
- targets:     the target-vector optimisation (all requests of the batch at once),
- solve:       the rest of the editor's call (keys, closed-form solve, carried state),
- apply:       building the delta and applying it,
- evaluation:  efficacy of the batch (teacher-forced P(new) > P(old)),

plus edits per second over the whole run and peak memory (GPU: max allocated; CPU: peak RSS of the
process). `--baseline-batches K` also runs the reference loop (targets optimised one request at a
time, `v_group_size=1`) on the first K batches, on the same model state, and reports both.

Shapes: `demo` (the project's demo GPT-2 and its catalogue: efficacy is meaningful), and random-weight
models built from configs for timing: `gpt2-xl` (48 x 1600), `llama-1b` (22 x 2048), `llama-8b`
(32 x 4096, use --dtype bfloat16), `tiny-llama` (a CPU smoke test of the code path)::

    python bench/locate_editors_speed.py --editor memit --shape demo --baseline-batches 1
    python bench/locate_editors_speed.py --editor alphaedit --shape llama-8b --device cuda --dtype bfloat16
    python bench/locate_editors_speed.py --report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.locate_world import LABELS, es, statistics_corpus, world  # noqa: E402
from editing.architecture import profile_of  # noqa: E402
from editing.delta import Delta  # noqa: E402
from editing.locate.statistics import moments_for  # noqa: E402
from editing.model_io import load_model, weights_fingerprint  # noqa: E402
from editing.protocol import EditContext, MemoryBlobCache  # noqa: E402
from editing.registry import get_editor, resolve_hparams  # noqa: E402
from infra.demo.model_builder import DemoModelConfig, ensure_demo_model  # noqa: E402

log = logging.getLogger("bench.locate_speed")
RESULTS = Path(__file__).with_name("results")
SHAPES = ("demo", "tiny-llama", "gpt2-xl", "llama-1b", "llama-8b")


def random_model(shape: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A model of the named shape with random weights, built directly on the device."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if shape == "gpt2-xl":
        config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25)
        cls = GPT2LMHeadModel
    else:
        dims = {"tiny-llama": (256, 688, 6, 4, 2, 32000), "llama-1b": (2048, 5632, 22, 32, 4, 32000),
                "llama-8b": (4096, 14336, 32, 32, 8, 128256)}[shape]
        hidden, inter, layers, heads, kv, vocab = dims
        config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=2048)
        cls = LlamaForCausalLM
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def editor_seconds(stats: dict[str, Any]) -> float:
    return float(stats.get("base_stats", stats).get("target_seconds", float("nan")))


def timed_batch(editor: str, model, tok, batch, hp, context: EditContext, device: str, parent: str | None, base_fp: str) -> tuple[dict, Delta, Any]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = get_editor(editor).compute(model, tok, batch, hp, context)
    sync()
    t1 = time.perf_counter()
    tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
    delta = Delta.create(tensors, editor=editor, hparams={}, base_fingerprint=base_fp, parent=parent, facts=[], model=model)
    applied = delta.apply(model)
    sync()
    t2 = time.perf_counter()
    efficacy = es(model, tok, [r.prompt for r in batch], [r.target_new for r in batch], [r.target_true for r in batch])
    sync()
    t3 = time.perf_counter()
    targets = editor_seconds(result.stats)
    return {
        "editor_s": t1 - t0, "targets_s": targets, "solve_s": (t1 - t0) - targets, "apply_s": t2 - t1, "eval_s": t3 - t2,
        "efficacy": efficacy, "stored_bytes": sum(t.numel() * t.element_size() for t in result.tensors.values()),
        "state_bytes": sum(t.numel() * t.element_size() for t in result.state.values()),
    }, delta, applied


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    facts, templates, requests, _ = world(args.edits)
    report = ensure_demo_model(args.model_dir, facts, templates, DemoModelConfig.demo(), progress=False)
    if args.shape == "demo":
        model, tok = load_model(Path(report.path), device=args.device, dtype=dtype)
    else:
        _, tok = load_model(Path(report.path))
        model = random_model(args.shape, args.device, dtype)
    family = profile_of(model)
    hp = resolve_hparams(args.editor, family, json.loads(args.overrides) if args.overrides else None)
    base_fp = weights_fingerprint(model)
    corpus = statistics_corpus(facts, templates)
    cache = MemoryBlobCache()
    context = EditContext(cache=cache, corpus=corpus, model_fingerprint=base_fp)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    statistics_of(args.editor, hp, family, model, tok, context)
    stats_s = time.perf_counter() - t0
    rows: list[dict] = []
    state: dict[str, torch.Tensor] = {}
    parent = None
    started = time.perf_counter()
    n_batches = (len(requests) + args.batch - 1) // args.batch
    for i, s in enumerate(range(0, len(requests), args.batch)):
        batch = requests[s : s + args.batch]
        row: dict[str, Any] = {"batch": i + 1, "edits": s + len(batch), "statistics_s": stats_s if i == 0 else 0.0}
        if i < args.baseline_batches:
            # the reference loop on the same model state; its delta is measured, then reverted
            loop_hp = baseline_hparams(args.editor, hp, family)
            loop, _, loop_applied = timed_batch(args.editor, model, tok, batch, loop_hp, dataclasses.replace(context, state=state), args.device, parent, base_fp)
            loop_applied.revert()
            row |= {f"loop_{k}": v for k, v in loop.items()}
        batched, delta, _ = timed_batch(args.editor, model, tok, batch, hp, dataclasses.replace(context, state=state), args.device, parent, base_fp)
        row |= batched | {"peak_mib": peak_memory_mib(args.device)}
        state, parent = delta.state(), delta.id
        rows.append(row)
        log.info("%s %s batch %d/%d: %s", args.shape, args.editor, i + 1, n_batches,
                 {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    total = time.perf_counter() - started + stats_s
    return {
        "editor": args.editor, "label": LABELS.get(args.editor, args.editor), "shape": args.shape, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or platform.machine()),
        "dtype": args.dtype, "threads": args.threads, "edits": len(requests), "batch": args.batch,
        "params": sum(p.numel() for p in model.parameters()), "total_s": total, "edits_per_s": len(requests) / total,
        "hparams": {k: v for k, v in dataclasses.asdict(hp).items()}, "rows": rows,
    }


def statistics_of(editor: str, hp: Any, family: str, model, tok, context: EditContext) -> None:
    """Compute (and cache) the key statistics the editor will read, so they are timed on their own."""
    own = resolve_hparams(hp.base, family, hp.base_overrides) if editor == "prune" else hp
    if editor == "ft" or not getattr(own, "mom2_adjustment", True):
        return
    layers = list(own.layers) if hasattr(own, "layers") else [own.layer]
    moments_for(model, tok, layers, own.mom2_n_samples, context)


def baseline_hparams(editor: str, hp: Any, family: str) -> Any:
    if editor == "prune":
        return dataclasses.replace(hp, base_overrides=dict(hp.base_overrides) | {"v_group_size": 1})
    return dataclasses.replace(hp, v_group_size=1)


def write_report() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("locate_speed_*.json"))]
    if not runs:
        raise SystemExit("no locate_speed_*.json results to report")
    lines = ["# Locate-and-edit editors: speed and memory", "",
             "Written by `bench/locate_editors_speed.py --report` from `bench/results/locate_speed_*.json`. Sequential",
             "batches on one model, as the service chains deltas; seconds are per batch (median over batches), `statistics`",
             "once per run (then cached). Peak memory: GPU max allocated, or CPU peak RSS of the process.", "",
             "| shape | device | editor | edits | batch | edits/s | statistics s | targets s | solve s | apply s | eval s | efficacy (mean) | peak MiB |",
             "|" + "---|" * 13]
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    for r in runs:
        rows = r["rows"]
        lines.append(
            f"| {r['shape']} | {r['device']} ({r['dtype']}, {r['threads']} thr) | {r['label']} | {r['edits']} | {r['batch']} | {r['edits_per_s']:.2f} | "
            f"{rows[0]['statistics_s']:.2f} | {med([x['targets_s'] for x in rows]):.2f} | {med([x['solve_s'] for x in rows]):.2f} | "
            f"{med([x['apply_s'] for x in rows]):.2f} | {med([x['eval_s'] for x in rows]):.2f} | "
            f"{sum(x['efficacy'] for x in rows) / len(rows):.3f} | {max(x['peak_mib'] for x in rows):.0f} |")
    lines += ["", "## Batched target vectors vs the reference one-request-at-a-time loop (same batch, same model state)", "",
              "| shape | device | editor | batch | loop s/batch | batched s/batch | speed-up | loop targets s | batched targets s | loop efficacy | batched efficacy |",
              "|" + "---|" * 11]
    for r in runs:
        for x in r["rows"]:
            if "loop_editor_s" not in x:
                continue
            lines.append(
                f"| {r['shape']} | {r['device']} | {r['label']} | {x['batch']} | {x['loop_editor_s']:.1f} | {x['editor_s']:.1f} | "
                f"{x['loop_editor_s'] / x['editor_s']:.1f}x | {x['loop_targets_s']:.1f} | {x['targets_s']:.1f} | "
                f"{x['loop_efficacy']:.3f} | {x['efficacy']:.3f} |")
    (RESULTS / "locate_editors_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    parts = [("statistics_s", "statistics (first batch)"), ("targets_s", "target vectors"), ("solve_s", "keys + solve"),
             ("apply_s", "apply"), ("eval_s", "evaluation")]
    labels = [f"{r['label']}\n{r['shape']}/{r['device']}" for r in runs]
    bottom = [0.0] * len(runs)
    for key, name in parts:
        values = [sum(x[key] for x in r["rows"]) / len(r["rows"]) for r in runs]
        ax.bar(range(len(runs)), values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(runs)), labels, fontsize=7)
    ax.set_ylabel("seconds per batch (mean)")
    ax.set_title("where a batch's time goes")
    ax.legend(fontsize=8)
    compared = [(r, x) for r in runs for x in r["rows"] if "loop_editor_s" in x]
    width = 0.4
    xs = list(range(len(compared)))
    ax2.bar([i - width / 2 for i in xs], [x["loop_editor_s"] for _, x in compared], width, label="one request at a time")
    ax2.bar([i + width / 2 for i in xs], [x["editor_s"] for _, x in compared], width, label="whole batch at once")
    ax2.set_xticks(xs, [f"{r['label']}\n#{x['batch']}" for r, x in compared], fontsize=7)
    ax2.set_ylabel("editor seconds for the batch")
    ax2.set_title("target vectors: reference loop vs batched (equal efficacy)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "locate_editors_speed.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", choices=sorted(LABELS))
    parser.add_argument("--shape", choices=SHAPES, default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--baseline-batches", type=int, default=0)
    parser.add_argument("--overrides", default="", help="JSON object of hyperparameter overrides")
    parser.add_argument("--model-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("editing").setLevel(logging.WARNING)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.report:
        write_report()
        return
    if not args.editor:
        parser.error("--editor is required (or --report)")
    result = run(args)
    (RESULTS / f"locate_speed_{args.shape}_{args.device.split(':')[0]}_{args.editor}.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
