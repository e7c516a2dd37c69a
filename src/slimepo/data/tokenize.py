"""Turn ``PreferencePair``s into token ids, exactly as the model will see them.

With a chat template (the tokenizer's, or an override):

    prompt_text = template(prompt, add_generation_prompt=True)
    full_text   = template(prompt + response)
    response_text = full_text[len(prompt_text):].rstrip()

``prompt_ids`` tokenize ``prompt_text`` without added special tokens (the template
already holds any BOS, so a tokenizer that adds one must not add a second), which is
what the model is given at inference; ``response_ids`` tokenize the rest. The response
ends with the template's end-of-turn token (``<|eot_id|>``, ``<|im_end|>``,
``<end_of_turn>``): the whitespace a template writes after it separates turns and is
never generated (generation stops at end-of-turn), so it is not trained on.

If ``full_text`` does not start with ``prompt_text`` or ``prompt_text + response_text``
does not tokenize to ``prompt_ids + response_ids``, the pair is still kept with the
separate tokenization, counted in ``report.template_mismatches``, and one warning per
call names the problem.

Without a template the texts are concatenated: ``prompt_ids`` = [BOS if the tokenizer
adds one] + tokens(prompt), ``response_ids`` = tokens(response) + [EOS].

Truncation: the prompt keeps its last ``max_prompt_length`` tokens (and its BOS, if it
starts with one), then each response keeps its first ``max_length - len(prompt_ids)``
tokens.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError

from slimepo.data.formats import Messages, PreferencePair, ValidationReport
from slimepo.data.sources import DataError, Origin


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair; ``prompt_ids + chosen_ids`` is the chosen sequence."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    origin: Origin
    #: Summed reference log-probs, filled in by ``--precompute-ref-logps``.
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None
    #: The pair's w_i >= 0 in every batch mean of the loss (``--weight-column``; 1 without).
    weight: float = 1.0


@dataclass(frozen=True)
class _Encoded:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    mismatch: str | None = None


class _TemplateRefused(Exception):
    pass


def check_lengths(max_length: int, max_prompt_length: int) -> None:
    """Raise ``ValueError`` unless 0 < max_prompt_length < max_length."""
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            "need 0 < max_prompt_length < max_length so every response keeps at least one "
            f"token; got max_prompt_length={max_prompt_length}, max_length={max_length}"
        )


def tokenize_pairs(
    pairs: Iterable[PreferencePair],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
    chat_template: str | os.PathLike[str] = "auto",
    report: ValidationReport | None = None,
) -> list[TokenizedPair]:
    """Tokenize and truncate ``pairs``; pairs that cannot be used are counted in ``report``.

    ``chat_template``: ``"auto"`` (the tokenizer's template if it has one, else plain
    text), ``"none"`` (plain text), or a Jinja template / a path to a file holding one.
    """
    check_lengths(max_length, max_prompt_length)
    report = ValidationReport() if report is None else report
    encode = _encoder(tokenizer, chat_template)
    tokenized, mismatches, first_mismatch = [], 0, ""
    for pair in pairs:
        try:
            encoded = encode(pair)
        except _TemplateRefused:
            report.add_bad("template_error", pair.origin)
            continue
        if encoded.mismatch:
            mismatches += 1
            first_mismatch = first_mismatch or f"{pair.origin}: {encoded.mismatch}"
        prompt_ids = _truncate_prompt(encoded.prompt_ids, max_prompt_length, tokenizer.bos_token_id)
        budget = max_length - len(prompt_ids)
        chosen_ids, rejected_ids = encoded.chosen_ids[:budget], encoded.rejected_ids[:budget]
        if not chosen_ids or not rejected_ids:
            report.add_bad("empty_after_truncation", pair.origin)
            continue
        tokenized.append(TokenizedPair(prompt_ids, chosen_ids, rejected_ids, pair.origin, weight=pair.weight))
    if mismatches:
        report.template_mismatches += mismatches
        warnings.warn(
            f"chat template mismatch in {mismatches} pairs (first at {first_mismatch}). "
            "Training uses the prompt tokenized alone (as at inference) followed by the "
            "response tokenized alone; check the template if this is not intended.",
            stacklevel=2,
        )
    return tokenized


def end_of_turn_id(tokenizer: Any, chat_template: str | os.PathLike[str] = "auto") -> int:
    """The token every untruncated response ends with, as :func:`tokenize_pairs` encodes it: the
    template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``...), or EOS without a template."""
    probe = PreferencePair("Hi", "Hello", "Hello", Origin("<end-of-turn probe>", 1))
    try:
        return _encoder(tokenizer, chat_template)(probe).chosen_ids[-1]
    except _TemplateRefused as err:
        raise ValueError(f"the chat template refuses a one-turn conversation: {err}") from err


def ends_with(pairs: Iterable[TokenizedPair], end_id: int) -> tuple[list[bool], list[bool]]:
    """Whether each chosen / rejected response ends with ``end_id`` (not where truncation cut
    its end off): the ``ends`` of :func:`slimepo.diagnostics.preference_metrics`."""
    pairs = list(pairs)
    return [p.chosen_ids[-1] == end_id for p in pairs], [p.rejected_ids[-1] == end_id for p in pairs]


def _truncate_prompt(prompt_ids: list[int], max_prompt_length: int, bos_id: int | None) -> list[int]:
    """The last ``max_prompt_length`` tokens; a leading BOS stays in front (models expect it)."""
    if len(prompt_ids) <= max_prompt_length:
        return prompt_ids
    if bos_id is not None and prompt_ids[0] == bos_id:
        return [bos_id, *prompt_ids[len(prompt_ids) - max_prompt_length + 1 :]]
    return prompt_ids[-max_prompt_length:]


def _encoder(
    tokenizer: Any, chat_template: str | os.PathLike[str]
) -> Callable[[PreferencePair], _Encoded]:
    if chat_template == "none" or (
        chat_template == "auto" and not getattr(tokenizer, "chat_template", None)
    ):
        if tokenizer.eos_token_id is None:
            raise ValueError("plain-text pairs need a tokenizer with an eos token to end responses")
        bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
        return lambda pair: _encode_plain(pair, tokenizer, bos)
    template = None if chat_template == "auto" else template_text(chat_template)
    return lambda pair: _encode_chat(pair, tokenizer, template)


def template_text(chat_template: str | os.PathLike[str]) -> str:
    text = str(chat_template)
    if "{{" in text or "{%" in text:
        return text
    path = Path(text).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise ValueError(
        f"chat_template must be 'auto', 'none', a Jinja template or a path to a file "
        f"holding one; {text!r} is none of these"
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: no "longer than the maximum sequence length" warning for rows truncated here anyway.
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _as_messages(value: Messages | str, role: str) -> Messages:
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _render(tokenizer: Any, messages: Messages, template: str | None, **kwargs: Any) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, **kwargs
        )
    except TemplateSyntaxError as err:
        raise ValueError(f"the chat template does not parse: {err}") from err
    except TemplateError as err:  # raise_exception(...) in the template, e.g. a system turn
        raise _TemplateRefused(str(err)) from err


def _encode_chat(pair: PreferencePair, tokenizer: Any, template: str | None) -> _Encoded:
    prompt = _as_messages(pair.prompt, "user")
    prompt_text = _render(tokenizer, prompt, template, add_generation_prompt=True)
    prompt_ids = _ids(tokenizer, prompt_text)
    responses, mismatch = [], None
    for response in (pair.chosen, pair.rejected):
        full_text = _render(tokenizer, prompt + _as_messages(response, "assistant"), template)
        if full_text.startswith(prompt_text):
            response_text = full_text[len(prompt_text) :]
        else:
            mismatch = mismatch or (
                "the text rendered for prompt + response does not start with the text "
                "rendered for the prompt alone with add_generation_prompt=True"
            )
            response_text = full_text[len(os.path.commonprefix([prompt_text, full_text])) :]
        # What the template writes after the last end-of-turn token separates turns; never generated.
        response_text = response_text.rstrip()
        response_ids = _ids(tokenizer, response_text)
        if mismatch is None and _ids(tokenizer, prompt_text + response_text) != prompt_ids + response_ids:
            mismatch = (
                "the full text does not tokenize to prompt tokens + response tokens: a token "
                "spans the boundary (e.g. trailing whitespace after the generation prompt)"
            )
        responses.append(response_ids)
    return _Encoded(prompt_ids, *responses, mismatch=mismatch)


def _encode_plain(pair: PreferencePair, tokenizer: Any, bos: list[int]) -> _Encoded:
    if not all(isinstance(text, str) for text in (pair.prompt, pair.chosen, pair.rejected)):
        raise DataError(
            f"{pair.origin} is a conversation, but there is no chat template to render it: "
            "use a tokenizer that has one or pass chat_template=<Jinja template or file>"
        )
    eos = [tokenizer.eos_token_id]
    return _Encoded(
        bos + _ids(tokenizer, pair.prompt),
        _ids(tokenizer, pair.chosen) + eos,
        _ids(tokenizer, pair.rejected) + eos,
    )


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of text on its own (as at inference)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
