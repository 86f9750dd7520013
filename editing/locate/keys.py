"""Subject-token positions and the keys (inputs of an MLP output projection) read there.

A *key* is the input of the edited projection `W` at the fact token of a prompt; the fact token is
chosen by `fact_token`:

- `subject_last`:  the last token of the subject (ROME/MEMIT's choice);
- `subject_first`: the first token of the subject;
- `prompt_last`:   the last token of the prompt.

Prompts are tokenised by `infra.encoding`, as the scorer and the fine-tuning editors do, and
optionally prefixed by context templates (`prefix + prompt`); keys are averaged over prefixes::

    rows = encode_prompts(tokenizer, prompts, subjects, fact_token="subject_last", prefixes=("",))
    keys = read_at_fact_tokens(model, rows, ["transformer.h.1.mlp.c_proj"], kind="input")
    k = average_over_prefixes(keys["transformer.h.1.mlp.c_proj"], rows)      # [n, d0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from editing.locate.hooks import capture
from infra.encoding import encode_answer, encode_prompt_with_offsets, pad_id, right_pad
from infra.errors import InvalidInput

FACT_TOKENS = ("subject_last", "subject_first", "prompt_last")


@dataclass(frozen=True)
class EncodedRows:
    """Tokenised prompts (one row per request x prefix), right-padded.

    input_ids, attention_mask: [R, T]; fact_pos: [R]; request: [R] index of the request a row
    belongs to; answer_start/answer_len: [R] where answer tokens sit (0 length when no answers).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    fact_pos: torch.Tensor
    request: torch.Tensor
    answer_start: torch.Tensor
    answer_len: torch.Tensor
    n_requests: int

    def __len__(self) -> int:
        return int(self.input_ids.size(0))

    def chunk(self, index: slice | torch.Tensor) -> "EncodedRows":
        """Rows at `index` (a slice or a tensor of row indices); request indices keep their meaning."""
        return EncodedRows(
            self.input_ids[index], self.attention_mask[index], self.fact_pos[index], self.request[index],
            self.answer_start[index], self.answer_len[index], self.n_requests,
        )

    def to(self, device: torch.device | str) -> "EncodedRows":
        t = [x.to(device) for x in (self.input_ids, self.attention_mask, self.fact_pos, self.request, self.answer_start, self.answer_len)]
        return EncodedRows(*t, self.n_requests)


def check_fact_token(value: str, owner: str) -> None:
    if value not in FACT_TOKENS:
        raise InvalidInput(f"{owner}: fact_token must be one of {FACT_TOKENS}, got {value!r}")


def _fact_position(offsets: Sequence[tuple[int, int]], start: int, end: int, fact_token: str, n_prompt: int, text: str) -> int:
    if fact_token == "prompt_last":
        return n_prompt - 1
    inside = [i for i, (a, b) in enumerate(offsets[:n_prompt]) if b > a and a < end and b > start]
    if not inside:
        raise InvalidInput(f"no token of the subject at characters {start}..{end} of {text!r}")
    return inside[-1] if fact_token == "subject_last" else inside[0]


def encode_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    subjects: Sequence[str],
    fact_token: str,
    prefixes: Sequence[str] = ("",),
    answers: Sequence[str] | None = None,
    add_eos: bool = True,
) -> EncodedRows:
    """One row per (request, prefix): `prefix + prompt` (+ `" " + answer` + eos when answers are given).

    The subject must occur in its prompt (its last occurrence is used). Answer tokens are taken from
    the tokenisation of the whole text when the prompt's tokens are a prefix of it, as the scorer does.
    """
    if len(prompts) != len(subjects) or (answers is not None and len(answers) != len(prompts)):
        raise InvalidInput("encode_prompts: prompts, subjects and answers must have the same length")
    check_fact_token(fact_token, "encode_prompts")
    eos = tokenizer.eos_token_id
    rows: list[tuple[list[int], int, int, int, int]] = []
    for i, (prompt, subject) in enumerate(zip(prompts, subjects)):
        at = prompt.rfind(subject) if subject else -1
        if at < 0 and fact_token != "prompt_last":
            raise InvalidInput(f"subject {subject!r} does not occur in prompt {prompt!r}")
        for prefix in prefixes:
            text = prefix + prompt
            ids, offsets = encode_prompt_with_offsets(tokenizer, text)
            pos = _fact_position(offsets, len(prefix) + at, len(prefix) + at + len(subject), fact_token, len(ids), text)
            answer_ids: list[int] = []
            if answers is not None:
                answer_ids = encode_answer(tokenizer, text, answers[i], ids)
                if add_eos and eos is not None:
                    answer_ids = answer_ids + [int(eos)]
            rows.append((ids + answer_ids, pos, i, len(ids), len(answer_ids)))
    input_ids, mask = right_pad([r[0] for r in rows], pad_id(tokenizer))
    col = lambda j: torch.tensor([row[j] for row in rows], dtype=torch.long)  # noqa: E731
    return EncodedRows(input_ids, mask, col(1), col(2), col(3), col(4), len(prompts))


@torch.no_grad()
def read_at_fact_tokens(
    model: nn.Module, rows: EncodedRows, module_names: Sequence[str], kind: str, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """The input (`kind="input"`) or output hidden state of each module at each row's fact token.

    Returns {module: [R, d]} in float32 on the model's device.
    """
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {name: [] for name in module_names}
    for start in range(0, len(rows), batch_size):
        part = rows.chunk(slice(start, start + batch_size)).to(device)
        with capture(model, module_names, kind=kind) as seen:
            model(input_ids=part.input_ids, attention_mask=part.attention_mask)
        index = torch.arange(len(part), device=device)
        for name in module_names:
            out[name].append(seen[name][index, part.fact_pos].float())
    return {name: torch.cat(parts) for name, parts in out.items()}


def average_over_prefixes(values: torch.Tensor, rows: EncodedRows) -> torch.Tensor:
    """Mean of per-row vectors [R, d] over the rows of each request -> [n_requests, d]."""
    request = rows.request.to(values.device)
    sums = torch.zeros(rows.n_requests, values.size(1), dtype=values.dtype, device=values.device).index_add_(0, request, values)
    counts = torch.bincount(request, minlength=rows.n_requests).clamp(min=1).to(values.dtype)
    return sums / counts[:, None]


def first_rows(rows: EncodedRows) -> torch.Tensor:
    """Index of each request's first row (its un-prefixed prompt when the first prefix is '')."""
    seen: dict[int, int] = {}
    for r, req in enumerate(rows.request.tolist()):
        seen.setdefault(req, r)
    return torch.tensor([seen[i] for i in range(rows.n_requests)], dtype=torch.long)
