"""SAUL: fine-tuning on edit sentences concatenated with random true facts (generation regularisation)."""

from pathlib import Path

from editing.registry import EditorSpec, register
from editing.saul.editor import SAULEditor
from editing.saul.hparams import SAULHParams

register(EditorSpec("saul", SAULEditor, SAULHParams, Path(__file__).with_name("defaults.json"),
                    "fine-tuning on edits concatenated with random facts from the pool (SAUL)"))

__all__ = ["SAULEditor", "SAULHParams"]
