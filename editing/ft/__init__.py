"""FT-L: constrained fine-tuning of chosen MLP output projections (the ROME paper's baseline)."""

from pathlib import Path

from editing.ft.editor import FTEditor
from editing.ft.hparams import FTHParams
from editing.registry import EditorSpec, register

register(EditorSpec("ft", FTEditor, FTHParams, Path(__file__).with_name("defaults.json"),
                    "constrained fine-tuning of one MLP layer (FT-L)"))

__all__ = ["FTEditor", "FTHParams"]
