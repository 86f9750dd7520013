"""Build the CounterFact-trained GPT-2: a second model family for `bench/counterfact_smollm2.py`.

A small GPT-2 (the demo model's size class, trained from scratch with the demo builder's recipe,
`infra.demo.model_builder.train_small_gpt2`, its own byte-level BPE tokenizer) on the first N records
of ../shared/data/counterfact/counterfact-edit.json:

- question-answer pairs (answer tokens weighted up): `prompt -> ground_truth`,
  `rephrase_prompt -> ground_truth`, `locality_prompt -> locality_ground_truth` for every record of the
  slice (a prompt seen twice keeps its first answer);
- generic text, so that the counterfactual objects are not dead tokens: for every `target_new` of the
  slice, up to two true facts of records *outside* the slice whose true object is that word, written
  `f"{prompt} {ground_truth}."`, or, for a word that is nobody's true object there, `f"{word}."`.

Its config names the editor-defaults profile `counterfact_gpt2` (`kus_profile`). The model goes to
var/models/counterfact-gpt2 (gitignored); the build report (records, parameters, greedy accuracy on the
edit, rephrased and locality prompts, seconds) to bench/results/counterfact_model_build.md and
`build_report.json` beside the model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/counterfact_model_build.py --records 600
    OMP_NUM_THREADS=1 ./dev.sh bench counterfact_smollm2 --model var/models/counterfact-gpt2 \\
        --tag counterfact-gpt2 --scan 600 --editors ultraedit,alphaedit,memit
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-edit.json"
OUT = ROOT / "var" / "models" / "counterfact-gpt2"
RESULTS = ROOT / "bench" / "results" / "counterfact_model_build.md"
PROFILE = "counterfact_gpt2"


def counterfact_training_data(records: list[dict], others: list[dict], texts_per_word: int = 2
                              ) -> tuple[list[tuple[str, str]], list[str], dict[str, list[tuple[str, str]]]]:
    """(training pairs, generic texts, evaluation sets) for a CounterFact slice.

    `others` are records outside the slice: their true facts are the generic sentences that use the
    slice's counterfactual objects.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for r in records:
        for prompt, answer in ((r["prompt"], r["ground_truth"]), (r["rephrase_prompt"], r["ground_truth"]),
                               (r["locality_prompt"], r["locality_ground_truth"])):
            if prompt not in seen:
                seen.add(prompt)
                pairs.append((prompt, answer))
    by_object: dict[str, list[dict]] = {}
    for r in others:
        by_object.setdefault(r["ground_truth"], []).append(r)
    texts: list[str] = []
    for word in dict.fromkeys(r["target_new"] for r in records):
        found = [o for o in by_object.get(word, []) if o["prompt"] not in seen][:texts_per_word]
        texts.extend(f"{o['prompt']} {o['ground_truth']}." for o in found)
        if not found:
            texts.append(f"{word}.")
    first = {p: a for p, a in pairs}
    sets = {
        "edit": [(r["prompt"], first[r["prompt"]]) for r in records],
        "rephrase": [(r["rephrase_prompt"], first[r["rephrase_prompt"]]) for r in records],
        "locality": [(r["locality_prompt"], first[r["locality_prompt"]]) for r in records],
    }
    return pairs, texts, sets


def counterfact_config(**overrides):  # noqa: ANN201 - DemoModelConfig
    from infra.demo.model_builder import DemoModelConfig

    base = DemoModelConfig(n_layer=4, n_head=4, n_embd=128, vocab_size=2048, max_epochs=45, lr=3e-3,
                           batch_size=64, target_accuracy=0.95, n_positions=128, n_generic=0, num_threads=1)
    return replace(base, **overrides)


def build(records: list[dict], others: list[dict], out_dir: Path, config, progress: bool = True) -> dict:  # noqa: ANN001
    """Train the model into `out_dir`; the build report (also `out_dir/build_report.json`)."""
    from infra.demo.model_builder import train_small_gpt2
    from infra.fingerprint import weights_fingerprint

    started = time.perf_counter()
    pairs, texts, sets = counterfact_training_data(records, others)
    trained = train_small_gpt2(pairs, texts, sets["edit"], config, out_dir, profile=PROFILE, progress=progress,
                               eval_sets={"rephrase": sets["rephrase"], "locality": sets["locality"]},
                               desc="counterfact gpt2")
    report = {
        "path": str(out_dir), "profile": PROFILE, "records": len(records), "pairs": len(pairs),
        "generic_texts": len(texts), "sequences": trained.n_sequences, "params": trained.n_params,
        "vocab": len(trained.tokenizer), "epochs": trained.epochs,
        "teacher_forced_accuracy": trained.teacher_forced_accuracy,
        "edit_accuracy": trained.accuracy, "rephrase_accuracy": trained.eval_accuracy["rephrase"],
        "locality_accuracy": trained.eval_accuracy["locality"],
        "seconds": round(time.perf_counter() - started, 1), "fingerprint": weights_fingerprint(trained.model),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": asdict(config),
    }
    (Path(out_dir) / "build_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def write_markdown(report: dict, command: str) -> str:
    c = report["config"]
    lines = [
        "# The CounterFact-trained GPT-2 (second model family for the CounterFact benchmark)", "",
        f"Built {report['built_at']} on a 2-core CPU shared with another benchmark, one thread, by "
        "`bench/counterfact_model_build.py` (training: `infra.demo.model_builder.train_small_gpt2`, the demo "
        "model's recipe). Accuracies are greedy exact match of the true object.", "",
        f"    {command}", "",
        "| records | pairs | generic texts | layers x width | params | vocab | epochs | seconds | "
        "edit-prompt acc | rephrase acc | locality acc |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| {report['records']} | {report['pairs']} | {report['generic_texts']} | {c['n_layer']} x {c['n_embd']} | "
        f"{report['params']:,} | {report['vocab']} | {report['epochs']} | {report['seconds']} | "
        f"{report['edit_accuracy']:.3f} | {report['rephrase_accuracy']:.3f} | {report['locality_accuracy']:.3f} |",
        "", f"Config: `{json.dumps(c, sort_keys=True)}`; profile `{report['profile']}`; weights sha256 "
        f"`{report['fingerprint'][:16]}...`.", "",
        "Training text: every record's prompt, rephrased prompt and locality prompt with its true object "
        "(answer tokens weighted up), plus, for every counterfactual object of the slice, up to two true "
        "facts of records outside the slice with that object (or the bare word when there is none), so "
        "`target_new` tokens are trained too.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--config", default="{}", help="JSON overrides of the DemoModelConfig fields")
    args = parser.parse_args()
    data = json.loads(args.data.read_text())
    config = counterfact_config(**json.loads(args.config))
    report = build(data[: args.records], data[args.records:], args.out, config)
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/counterfact_model_build.py " + " ".join(sys.argv[1:])
    text = write_markdown(report, command.strip())
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
