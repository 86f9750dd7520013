"""F-Learning: forget the old facts by subtracting λ times their fine-tuning update, then learn the new."""

from pathlib import Path

from editing.flearning.editor import FLearningEditor
from editing.flearning.hparams import FLearningHParams
from editing.registry import EditorSpec, register

register(EditorSpec("flearning", FLearningEditor, FLearningHParams, Path(__file__).with_name("defaults.json"),
                    "forgetting before learning: subtract the old facts' update, then fine-tune (full or LoRA)"))

__all__ = ["FLearningEditor", "FLearningHParams"]
