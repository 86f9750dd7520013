"""PRUNE: restrain large singular values of the accumulated update of MEMIT or AlphaEdit (Ma et al., ICLR 2025)."""

from pathlib import Path

from editing.prune.editor import PRUNEEditor
from editing.prune.hparams import PRUNEHParams
from editing.registry import EditorSpec, register

register(EditorSpec("prune", PRUNEEditor, PRUNEHParams, Path(__file__).with_name("defaults.json"),
                    "MEMIT or AlphaEdit with the accumulated update's large singular values restrained (PRUNE)", prefers_cumulative=True))

__all__ = ["PRUNEEditor", "PRUNEHParams"]
