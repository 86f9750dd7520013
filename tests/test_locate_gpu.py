"""The locate-and-edit editors on an accelerator, in float32 and bfloat16 (pytest -m gpu).

Left out of the default run. The CPU parameter checks the test itself on machines without CUDA;
the CUDA ones run where a GPU is present and are skipped elsewhere. The LLaMA-shaped tiny model of the
contract tests is edited on the device: the edit must move the target's probability, and reverting must restore every
weight bit for bit on the device.
"""

from __future__ import annotations

import pytest
import torch

from editing.delta import Delta
from editing.model_io import weights_fingerprint
from editing.protocol import EditContext
from editing.registry import get_editor, resolve_hparams
from tests.test_locate_editors import CORPUS, REQUESTS, overrides, tiny_model
from tests.tiny_lm import tiny_tokenizer
from validation.scoring import answer_nll

pytestmark = pytest.mark.gpu

DEVICES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float32, id="cuda-fp32"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16"),
]


@pytest.mark.parametrize("editor", ["rome", "memit", "alphaedit", "prune"])
@pytest.mark.parametrize("device,dtype", DEVICES)
def test_edit_on_the_device_moves_the_target_and_reverts_bit_for_bit(editor: str, device: str, dtype: torch.dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tok = tiny_tokenizer(CORPUS + [r.prompt + " " + r.target_new for r in REQUESTS], vocab_size=300)
    model = tiny_model("llama", len(tok)).to(device=device, dtype=dtype)
    hp = resolve_hparams(editor, "llama", overrides(editor, layers=(0, 1) if editor in ("memit", "rome") else (1,)))
    before = weights_fingerprint(model)
    prompts, new = [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS]
    nll_before = answer_nll(model, tok, prompts, new)
    result = get_editor(editor).compute(model, tok, REQUESTS, hp, EditContext(corpus=tuple(CORPUS)))
    assert weights_fingerprint(model) == before
    tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
    delta = Delta.create(tensors, editor=editor, hparams={}, base_fingerprint=before, parent=None, facts=[], model=model)
    applied = delta.apply(model)
    nll_after = answer_nll(model, tok, prompts, new)
    applied.revert()
    assert weights_fingerprint(model) == before
    assert all(p.device.type == device and p.dtype == dtype for p in model.parameters())
    assert float(nll_after.mean()) < float(nll_before.mean()) - 0.02, (nll_before, nll_after)
