"""LoRA editing (PEFT) as a baseline: adapters trained on the edits, merged as ΔW = u @ v."""

from pathlib import Path

from editing.lora.editor import LoRAEditor
from editing.lora.hparams import LoRAHParams
from editing.registry import EditorSpec, register

register(EditorSpec("lora", LoRAEditor, LoRAHParams, Path(__file__).with_name("defaults.json"),
                    "LoRA adapters (PEFT) trained on the edits, merged as low-rank deltas"))

__all__ = ["LoRAEditor", "LoRAHParams"]
