"""Which facts a locate-and-edit editor can write: efficacy and target reach per relation.

Locate-and-edit editors write a fact by shifting one hidden state (the fact token's) and solving for
the MLP update that produces the shift. If the model reads a relation's answer from elsewhere, no
shift at that one position reaches the target. On the quality bench's first batch of 100 demo
edits this reports, per relation:

- efficacy (P(new) > P(old)) after each locate editor's edit with the gpt2 defaults;
- the target vector's final NLL with the defaults, and with the shift unconstrained (no norm clamp,
  KL or decay, 200 steps) at each block and fact-token choice: the best any single position can do.

Writes `bench/results/locate_reach_by_relation.md`.

    python bench/locate_reach_by_relation.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.locate_world import LABELS, demo_model, edit_applied, es, statistics_corpus, world  # noqa: E402
from editing.architecture import layout_of, num_layers  # noqa: E402
from editing.locate.settings import target_settings  # noqa: E402
from editing.locate.target_vectors import optimise_targets  # noqa: E402
from editing.protocol import EditContext, MemoryBlobCache  # noqa: E402
from editing.registry import resolve_hparams  # noqa: E402

RESULTS = Path(__file__).with_name("results")
UNCONSTRAINED = {"clamp_norm_factor": 1e6, "kl_factor": 0.0, "v_weight_decay": 0.0, "v_steps": 200, "v_lr": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facts, templates, requests, _ = world(1000)
    model, tok, fp = demo_model(args.model_dir, facts, templates)
    context = EditContext(cache=MemoryBlobCache(), corpus=statistics_corpus(facts, templates), model_fingerprint=fp)
    batch = requests[:100]
    relations = sorted({r.relation for r in batch})
    by_relation = {rel: [r for r in batch if r.relation == rel] for rel in relations}

    efficacy: dict[str, dict[str, float]] = {}
    for editor in ("rome", "memit", "alphaedit", "prune"):
        with edit_applied(editor, resolve_hparams(editor, "demo"), model, tok, batch, context):
            efficacy[editor] = {rel: es(model, tok, [r.prompt for r in rs], [r.target_new for r in rs], [r.target_true for r in rs])
                                for rel, rs in by_relation.items()}
        print(editor, {k: round(v, 2) for k, v in efficacy[editor].items()}, flush=True)

    layout = layout_of(model)
    memit_hp = resolve_hparams("memit", "demo")
    reach: dict[str, dict[str, float]] = {}

    def mean_nll_by_relation(hp, block: int) -> dict[str, float]:
        res = optimise_targets(model, tok, batch, layout.block_module(block), target_settings(hp))
        values = defaultdict(list)
        for r, nll in zip(batch, res.nll_last.tolist()):
            values[r.relation].append(nll)
        return {rel: sum(v) / len(v) for rel, v in values.items()}

    last = max(memit_hp.layers)
    reach[f"defaults (block {last}, {memit_hp.fact_token})"] = mean_nll_by_relation(memit_hp, last)
    for fact_token in ("prompt_last", "subject_last", "subject_first"):
        for block in range(num_layers(model)):
            hp = dataclasses.replace(resolve_hparams("memit", "demo", UNCONSTRAINED), fact_token=fact_token)
            reach[f"unconstrained, block {block}, {fact_token}"] = mean_nll_by_relation(hp, block)
            print(fact_token, block, {k: round(v, 2) for k, v in reach[f"unconstrained, block {block}, {fact_token}"].items()}, flush=True)

    head = "| " + " | ".join(relations) + " |"
    lines = ["# What locate-and-edit can write into the demo model, by relation", "",
             f"First batch of 100 counterfactual demo edits ({', '.join(f'{rel} {len(rs)}' for rel, rs in by_relation.items())}); "
             f"CPU, {args.threads} thread(s). Written by `bench/locate_reach_by_relation.py`.", "",
             "## Efficacy (P(new) > P(old)) after one edit of the batch, gpt2 defaults", "",
             "| editor " + head, "|---" * (len(relations) + 1) + "|"]
    for editor, row in efficacy.items():
        lines.append(f"| {LABELS[editor]} | " + " | ".join(f"{row[rel]:.2f}" for rel in relations) + " |")
    lines += ["", "## Target vectors: mean final answer NLL (below 0.05 = the target is reached)", "",
              "| shift " + head, "|---" * (len(relations) + 1) + "|"]
    for name, row in reach.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[rel]:.2f}" for rel in relations) + " |")
    (RESULTS / "locate_reach_by_relation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
