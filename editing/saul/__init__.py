"""SAUL: fine-tuning on edit sentences concatenated with random true facts (generation regularisation)."""

from pathlib import Path

from editing.registry import EditorSpec, register
from editing.saul.editor import SAULEditor
from editing.saul.hparams import SAULHParams

# Sequential by default: each refresh trains on its own targets on top of the live model, while the
# regulariser rehearses every other catalogue fact as the live model says it, earlier refreshes'
# facts included (bench/results/refresh_sequence.md). Cumulative retraining from the base over the
# whole ledger kept changed facts too but broke 8-10 of 100 unrelated answers on the demo's second
# refresh (it also undoes whatever the previous delta had moved), and its time grows with the ledger.
register(EditorSpec("saul", SAULEditor, SAULHParams, Path(__file__).with_name("defaults.json"),
                    "fine-tuning on edits concatenated with random facts from the pool (SAUL)"))

__all__ = ["SAULEditor", "SAULHParams"]
