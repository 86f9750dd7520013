"""Peak memory and time of the scorer on a real vocabulary, with and without `logits_to_keep`.

Each mode runs in its own process (peak RSS is per process): greedy answers, then teacher-forced
answer scores, for the first N CounterFact edit prompts on SmolLM2-135M (`kus models pull smollm2-135m`).

    ./dev.sh bench scoring_memory            # both modes, then bench/results/scoring_memory.md

`full` disables the projection-only-where-read (the whole [batch, tokens, vocabulary] logits, as before);
`keep` is the service's scorer.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-edit.json"
OUT = ROOT / "bench" / "results" / "scoring_memory.md"


def measure(model_dir: Path, mode: str, n: int) -> dict:
    import torch

    import infra.decoding as decoding
    import validation.scoring as scoring
    from editing.model_io import load_model

    torch.set_num_threads(1)
    model, tok = load_model(model_dir)
    if mode == "full":
        decoding.last_logits_kwargs = scoring.last_logits_kwargs = lambda model, keep: {}
    records = json.loads(DATA.read_text())[:n]
    prompts, answers = [r["prompt"] for r in records], [r["ground_truth"] for r in records]
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    loaded = peak()
    t = time.perf_counter()
    decoding.greedy_answers(model, tok, prompts)
    greedy_s, after_greedy = time.perf_counter() - t, peak()
    t = time.perf_counter()
    scoring.answer_scores(model, tok, prompts, answers)
    return {"mode": mode, "prompts": n, "loaded_mb": round(loaded), "greedy_peak_mb": round(after_greedy),
            "greedy_s": round(greedy_s, 1), "scores_peak_mb": round(peak()), "scores_s": round(time.perf_counter() - t, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "smollm2-135m")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--mode", choices=["full", "keep"], default=None, help="one mode in this process (internal)")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.model, args.mode, args.prompts)))
        return
    rows = []
    for mode in ("full", "keep"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--model", str(args.model),
                              "--prompts", str(args.prompts)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = ["# Scorer memory on SmolLM2-135M: logits for every position (`full`) or only where read (`keep`)", "",
             f"Command: `./dev.sh bench scoring_memory --prompts {args.prompts}` (one thread per process, 2-core CPU).", "",
             "| mode | prompts | peak RSS after load (MB) | after greedy answers (MB) | greedy s | after answer scores (MB) | scores s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['prompts']} | {r['loaded_mb']} | {r['greedy_peak_mb']} | {r['greedy_s']} | "
              f"{r['scores_peak_mb']} | {r['scores_s']} |" for r in rows]
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
