"""SAUL: fine-tuning on edit sentences concatenated with random true facts (generation regularisation)."""

from pathlib import Path

from editing.registry import EditorSpec, register
from editing.saul.editor import SAULEditor
from editing.saul.hparams import SAULHParams

# Cumulative by default: retrained from the base over the whole ledger, the demo keeps changed facts
# agreeing at 0.98-0.99 refresh after refresh, where sequential edits overwrite earlier ones (0.94 after
# the second refresh, 0.67 after the ninth; bench/results/refresh_sequence.md). The price: each refresh
# trains on every ledger fact, so its time grows with the ledger.
register(EditorSpec("saul", SAULEditor, SAULHParams, Path(__file__).with_name("defaults.json"),
                    "fine-tuning on edits concatenated with random facts from the pool (SAUL)",
                    prefers_cumulative=True))

__all__ = ["SAULEditor", "SAULHParams"]
