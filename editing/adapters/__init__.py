"""Shared pieces of the fine-tuning-family editors (LoRA, SAUL, F-Learning, ELDER).

- `targets`: which modules of a model family an editor trains (block-relative names x layers);
- `lora`: attach PEFT LoRA adapters for the duration of a computation, read them back as
  low-rank weight deltas (`<param>::u` @ `<param>::v`), and leave the model exactly as it was;
- `training`: a small Adam loop and a chunked answer loss.
"""
