"""AlphaEdit: MEMIT's update projected onto the null space of preserved keys (Fang et al., ICLR 2025)."""

from pathlib import Path

from editing.alphaedit.editor import AlphaEditEditor
from editing.alphaedit.hparams import AlphaEditHParams
from editing.registry import EditorSpec, register

register(EditorSpec("alphaedit", AlphaEditEditor, AlphaEditHParams, Path(__file__).with_name("defaults.json"),
                    "MEMIT projected onto the null space of preserved keys, with accumulated edited keys (AlphaEdit)", prefers_cumulative=True))

__all__ = ["AlphaEditEditor", "AlphaEditHParams"]
