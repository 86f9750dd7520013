"""ROME: rank-one model editing of one MLP layer, one fact at a time (Meng et al., NeurIPS 2022)."""

from pathlib import Path

from editing.registry import EditorSpec, register
from editing.rome.editor import ROMEEditor
from editing.rome.hparams import ROMEHParams

register(EditorSpec("rome", ROMEEditor, ROMEHParams, Path(__file__).with_name("defaults.json"),
                    "rank-one update of one MLP layer per fact, facts written one after another (ROME)", prefers_cumulative=True))

__all__ = ["ROMEEditor", "ROMEHParams"]
