"""MEMIT: mass editing, the batch's residual spread over several MLP layers (Meng et al., ICLR 2023)."""

from pathlib import Path

from editing.memit.editor import MEMITEditor
from editing.memit.hparams import MEMITHParams
from editing.registry import EditorSpec, register

register(EditorSpec("memit", MEMITEditor, MEMITHParams, Path(__file__).with_name("defaults.json"),
                    "many facts at once, closed-form update spread over several MLP layers (MEMIT)", prefers_cumulative=True))

__all__ = ["MEMITEditor", "MEMITHParams"]
