"""An editor plan: editors tried in order, each on the requests the ones before it did not write.

No single method writes every kind of fact on every model (on the demo model the locate-and-edit
family writes warranties but no prices, fine-tuning writes both), so a refresh names a plan
("alphaedit,saul") and every request is routed to the first editor that writes it::

    result = run_plan(model, tokenizer, requests, [("alphaedit", hp_a), ("saul", hp_s)], context)
    result.tensors      # one weight update: the editors' updates summed per parameter
    result.unwritten    # request index -> why no editor wrote it

Each editor computes on the model as the editors before it left it (their updates held in place
while it computes, then removed), so later editors see what earlier ones wrote. "Written" means
the greedy answer to the request's prompt is its new value, checked after each editor but the
last; what the last one leaves unwritten is found by the run's evaluation. The model is left as
it was given, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from editing.locate.weights import add_update_, param, update_of
from editing.protocol import EditContext, EditResult
from editing.registry import get_editor
from infra.decoding import greedy_answers
from infra.domain import EditRequest
from infra.errors import InvalidInput


@dataclass(frozen=True)
class PlanStep:
    """What one editor of the plan did: the requests it was given (indices into the plan's) and wrote."""

    editor: str
    given: list[int]
    written: list[int]
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanResult:
    tensors: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    apply_kind: str
    steps: list[PlanStep]
    #: request index -> why it is not written (the last editor's own report, or the greedy answer)
    unwritten: dict[int, str]


def combine_updates(results: Sequence[EditResult]) -> dict[str, torch.Tensor]:
    """One set of delta tensors for several editors' weight updates: a parameter only one editor
    touched keeps that editor's tensors (low-rank stays low-rank); others get the dense sum."""
    owners: dict[str, list[EditResult]] = {}
    for result in results:
        for name in {k.split("::", 1)[0] for k in result.tensors if not k.startswith("state::")}:
            owners.setdefault(name, []).append(result)
    combined: dict[str, torch.Tensor] = {}
    for name, rs in sorted(owners.items()):
        if len(rs) == 1:
            combined.update({k: v for k, v in rs[0].tensors.items() if k.split("::", 1)[0] == name})
        else:
            combined[f"{name}::dense"] = torch.stack([update_of(r.tensors, name) for r in rs]).sum(0).contiguous()
    return combined


def run_plan(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    steps: Sequence[tuple[str, Any]],
    context: EditContext | None = None,
    progress: Callable[[str], None] | None = None,
) -> PlanResult:
    """Run the editors of `steps` ((name, hparams) in order) over `requests`; see the module docstring."""
    if not steps:
        raise InvalidInput("an editor plan needs at least one editor")
    context = context or EditContext()
    remaining = list(range(len(requests)))
    results: list[EditResult] = []
    done: list[PlanStep] = []
    state = dict(context.state)
    unwritten: dict[int, str] = {}
    originals: dict[str, torch.Tensor] = {}
    apply_kind = "weights"
    try:
        for position, (name, hparams) in enumerate(steps):
            last = position == len(steps) - 1
            if not remaining:
                break
            batch = [requests[i] for i in remaining]
            if progress:
                progress(f"{name}: {len(batch)} requests")
            step_context = replace(context, state=dict(state)) if not originals else replace(
                context, state=dict(state), from_base=False,
                base_weights=_without(model, dict(originals), context.base_weights))
            started = time.perf_counter()
            result = get_editor(name).compute(model, tokenizer, batch, hparams, step_context)
            seconds = time.perf_counter() - started
            results.append(result)
            state.update(result.state)
            if result.apply_kind != "weights":
                if len(steps) > 1:
                    raise InvalidInput(f"{name} serves its edits unmerged ({result.apply_kind}); it must be a plan's only editor")
                apply_kind = result.apply_kind
            if last:
                unwritten.update({remaining[i]: why for i, why in result.unwritten.items()})
                written = [i for pos, i in enumerate(remaining) if pos not in result.unwritten]
                done.append(PlanStep(name, list(remaining), written, seconds, dict(result.stats)))
                break
            for param_name in {k.split("::", 1)[0] for k in result.tensors if not k.startswith("state::")}:
                originals.setdefault(param_name, param(model, param_name).detach().clone())
            add_update_(model, result.tensors)
            answers = greedy_answers(model, tokenizer, [r.prompt for r in batch])
            written = [i for i, r, a in zip(remaining, batch, answers) if a.strip() == r.target_new.strip()]
            done.append(PlanStep(name, list(remaining), written, seconds, dict(result.stats)))
            remaining = [i for i in remaining if i not in set(written)]
    finally:
        _restore(model, originals)
    tensors = combine_updates(results) if apply_kind == "weights" else dict(results[0].tensors)
    return PlanResult(tensors=tensors, state=state, apply_kind=apply_kind, steps=done, unwritten=unwritten)


def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in saved.items():
            param(model, name).copy_(tensor)


def _without(
    model: nn.Module,
    originals: dict[str, torch.Tensor],
    inner: Callable[[], AbstractContextManager[None]] | None,
) -> Callable[[], AbstractContextManager[None]]:
    """A `base_weights` for a later editor: the earlier editors' updates removed, then the given
    context's own (e.g. the promoted chain reverted) inside; everything put back on exit."""

    @contextmanager
    def base() -> Iterator[None]:
        current = {name: param(model, name).detach().clone() for name in originals}
        _restore(model, originals)
        try:
            if inner is None:
                yield
            else:
                with inner():
                    yield
        finally:
            _restore(model, current)

    return base
