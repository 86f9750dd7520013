"""ELDER: a mixture of LoRA experts with a router, guided routing and deferral, served unmerged (lifelong)."""

from pathlib import Path

from editing.delta import register_applier
from editing.elder.editor import ELDEREditor
from editing.elder.hparams import ELDERHParams
from editing.elder.modules import apply_elder
from editing.registry import EditorSpec, register

register(EditorSpec("elder", ELDEREditor, ELDERHParams, Path(__file__).with_name("defaults.json"),
                    "mixture of LoRA experts with guided routing and deferral, served unmerged (ELDER)", cumulative=False))
register_applier("elder", apply_elder)

__all__ = ["ELDEREditor", "ELDERHParams"]
