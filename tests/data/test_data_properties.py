"""Property: any mix of garbage and valid rows goes through load -> normalize -> tokenize
without an unhandled exception, every row is accounted for, and each valid row (in any
of TRL's formats) comes out with exactly the ids of its canonical conversation tokenized
alone."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimepo.data import (
    Origin,
    PreferencePair,
    Row,
    ValidationReport,
    normalize_rows,
    prepare_pairs,
    tokenize_pairs,
)
from slimepo.testing import assistant, tiny_tokenizer, user

TOKENIZER = tiny_tokenizer()

WORDS = st.sampled_from(["the", "sea", "Four.", "is", "wide,", "cat", "über", "数", "🙂", "\t"])
SHORT_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
LONG_TEXT = st.lists(WORDS, min_size=100, max_size=300).map(" ".join)
TEXT = st.one_of(SHORT_TEXT, SHORT_TEXT, LONG_TEXT).filter(lambda text: text.strip())
BLANK = st.sampled_from(["", " ", "\n\t ", "\u3000"])

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
JUNK = st.recursive(
    JSON_LEAF,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
ROLE = st.sampled_from(["user", "assistant", "system", "tool", "robot", "", "USER"]) | JUNK
MESSAGE = st.fixed_dictionaries(
    {}, optional={"role": ROLE, "content": st.one_of(TEXT, BLANK, JUNK), "name": JUNK}
)
FIELD = st.one_of(TEXT, BLANK, JUNK, st.lists(MESSAGE, max_size=4), MESSAGE)




@st.composite
def valid_rows(draw) -> tuple[dict, PreferencePair]:
    """A valid row in a random TRL format, and the canonical pair it must become."""
    system = draw(st.none() | TEXT)
    history = draw(st.lists(st.tuples(TEXT, TEXT), max_size=2))
    question, chosen, rejected = draw(TEXT), draw(TEXT), draw(TEXT)
    if rejected.strip() == chosen.strip():
        rejected += " (worse)"
    prompt = [{"role": "system", "content": system}] if system else []
    for asked, answered in history:
        prompt += [user(asked), assistant(answered)]
    prompt.append(user(question))
    canonical = PreferencePair(prompt, [assistant(chosen)], [assistant(rejected)], Origin("", 0))

    layouts = ["conversational", "text_responses", "implicit", "ultrafeedback", "repeated"]
    if prompt == [user(question)]:
        layouts.append("explicit_text")
    layout = draw(st.sampled_from(layouts))
    full_chosen, full_rejected = [*prompt, assistant(chosen)], [*prompt, assistant(rejected)]
    data = {
        "conversational": {
            "prompt": prompt,
            "chosen": [assistant(chosen)],
            "rejected": [assistant(rejected)],
        },
        "text_responses": {"prompt": prompt, "chosen": chosen, "rejected": rejected},
        "implicit": {
            "chosen": full_chosen,
            "rejected": full_rejected,
            "prompt_id": "x",
            "score_chosen": 1.0,
        },
        "ultrafeedback": {"prompt": question, "chosen": full_chosen, "rejected": full_rejected},
        "repeated": {"prompt": prompt, "chosen": full_chosen, "rejected": full_rejected},
        "explicit_text": {"prompt": question, "chosen": chosen, "rejected": rejected},
    }[layout]
    data.update(
        draw(st.dictionaries(st.sampled_from(["id", "messages", "source"]), JUNK, max_size=2))
    )
    return data, canonical


@st.composite
def garbage_rows(draw) -> object:
    kind = draw(st.sampled_from(["junk", "fields", "broken_valid", "identical"]))
    if kind == "junk":
        return draw(JUNK)
    if kind == "fields":
        keys = ["prompt", "chosen", "rejected", "messages", "extra"]
        return draw(st.fixed_dictionaries({}, optional=dict.fromkeys(keys, FIELD)))
    if kind == "identical":
        same = draw(st.one_of(TEXT, st.lists(MESSAGE, min_size=1, max_size=2)))
        return {"prompt": draw(FIELD), "chosen": same, "rejected": same}
    data, _ = draw(valid_rows())
    key = draw(st.sampled_from(["chosen", "rejected"]))
    data[key] = draw(st.one_of(st.none(), BLANK, JUNK))
    return data


MIXED = st.lists(
    st.one_of(valid_rows(), garbage_rows().map(lambda data: (data, None))), min_size=1, max_size=10
)
LENGTHS = st.integers(1, 48).flatmap(
    lambda prompt_length: st.tuples(st.integers(prompt_length + 1, 128), st.just(prompt_length))
)


def _tokenize_alone(pair: PreferencePair, lengths: tuple[int, int]):
    max_length, max_prompt_length = lengths
    (tokens,) = tokenize_pairs(
        [pair], TOKENIZER, max_length=max_length, max_prompt_length=max_prompt_length
    )
    return tokens.prompt_ids, tokens.chosen_ids, tokens.rejected_ids


def _check_valid_rows_survive(tokenized, expected, lengths):
    by_origin = {tokens.origin: tokens for tokens in tokenized}
    for origin, canonical in expected:
        tokens = by_origin[origin]
        actual = (tokens.prompt_ids, tokens.chosen_ids, tokens.rejected_ids)
        assert actual == _tokenize_alone(canonical, lengths), origin


SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@settings(SETTINGS, max_examples=60)
@given(mixed=MIXED, lengths=LENGTHS)
def test_garbage_rows_never_crash_and_valid_rows_survive_unchanged(mixed, lengths):
    rows = [Row(data, Origin("mixed", i)) for i, (data, _) in enumerate(mixed, start=1)]
    rows.append(Row(None, Origin("mixed", len(rows) + 1), problem="invalid_json"))
    report = ValidationReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = normalize_rows(rows, report)
        tokenized = tokenize_pairs(
            pairs, TOKENIZER, max_length=lengths[0], max_prompt_length=lengths[1], report=report
        )
    assert report.total_rows == len(rows)
    assert (
        report.kept_rows == len(tokenized) >= sum(canonical is not None for _, canonical in mixed)
    )
    assert str(report)
    expected = [(row.origin, canonical) for row, (_, canonical) in zip(rows, mixed) if canonical]
    _check_valid_rows_survive(tokenized, expected, lengths)


@settings(SETTINGS, max_examples=20)
@given(
    mixed=MIXED,
    noise=st.lists(st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b"")), max_size=4),
    lengths=LENGTHS,
)
def test_jsonl_with_garbage_and_random_bytes_loads_without_crashing(mixed, noise, lengths):
    lines = [json.dumps(data).encode() for data, _ in mixed] + noise
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mixed.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        valid = [(Origin(str(path), i), c) for i, (_, c) in enumerate(mixed, start=1) if c]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not valid:
                return
            tokenized, report = prepare_pairs(
                path,
                TOKENIZER,
                max_length=lengths[0],
                max_prompt_length=lengths[1],
                max_bad_fraction=1.0,
            )
    assert report.total_rows == len(mixed) + sum(bool(line.strip()) for line in noise)
    _check_valid_rows_survive(tokenized, valid, lengths)
