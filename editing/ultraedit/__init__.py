"""UltraEdit: training-, subject- and memory-free lifelong editing (Gu et al., arXiv 2505.14679)."""

from pathlib import Path

from editing.registry import EditorSpec, register
from editing.ultraedit.editor import UltraEditEditor
from editing.ultraedit.hparams import UltraEditHParams

register(EditorSpec("ultraedit", UltraEditEditor, UltraEditHParams, Path(__file__).with_name("defaults.json"),
                    "closed-form ridge update from keys and lifelong-normalised value gradients, no training (UltraEdit)"))

__all__ = ["UltraEditEditor", "UltraEditHParams"]
