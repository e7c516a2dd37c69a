import pytest

from slimepo.eval.health import generation_health, summarize_health

EOT = {2, 32000}


def test_generation_that_stops_on_end_of_turn_within_budget_ended():
    health = generation_health("Sure, here it is.", [5, 6, 2, 0, 0], EOT, max_new_tokens=10)

    assert health["ended"] is True
    assert health["length_tokens"] == 3  # padding after the end of turn is not counted
    assert health["empty"] is False


def test_generation_without_end_of_turn_or_past_budget_did_not_end():
    assert generation_health("a b", [5, 6, 7], EOT, max_new_tokens=3)["ended"] is False
    late = generation_health("a b", [5, 6, 7, 32000], EOT, max_new_tokens=3)
    assert late["ended"] is False
    assert late["length_tokens"] == 4


def test_unknown_token_ids_leave_ended_and_length_unknown():
    health = generation_health("text", None, EOT, max_new_tokens=8)

    assert health["ended"] is None
    assert health["length_tokens"] is None


def test_whitespace_only_text_is_empty_with_no_repetition():
    health = generation_health(" \n\t ", [2], EOT, max_new_tokens=8)

    assert health["empty"] is True
    assert health["repetition"] == 0.0
    assert health["degenerate"] is False


def test_repetition_is_share_of_repeated_word_trigrams():
    # trigrams: (a b c) (b c a) (c a b) (a b c): 3 unique of 4
    mild = generation_health("a b c a b c", None, EOT, max_new_tokens=8)
    assert mild["repetition"] == pytest.approx(1 - 3 / 4)
    assert mild["degenerate"] is False
    # six identical words: 4 trigrams, 1 unique
    loop = generation_health("go go go go go go", None, EOT, max_new_tokens=8)
    assert loop["repetition"] == pytest.approx(1 - 1 / 4)
    assert loop["degenerate"] is True


def test_repetition_is_zero_below_n_words_and_n_is_configurable():
    assert generation_health("hello world", None, EOT, 8)["repetition"] == 0.0
    unigram = generation_health("a a b", None, EOT, 8, ngram=1)
    assert unigram["repetition"] == pytest.approx(1 - 2 / 3)
    strict = generation_health("a b c a b c", None, EOT, 8, degenerate_threshold=0.2)
    assert strict["degenerate"] is True


def test_summary_rates_skip_unknown_values():
    records = [
        {
            "ended": True,
            "empty": False,
            "repetition": 0.0,
            "degenerate": False,
            "length_tokens": 10,
        },
        {"ended": False, "empty": True, "repetition": 0.6, "degenerate": True, "length_tokens": 30},
        {
            "ended": None,
            "empty": False,
            "repetition": 0.3,
            "degenerate": False,
            "length_tokens": None,
        },
    ]

    summary = summarize_health(records)

    assert summary == pytest.approx(
        {
            "count": 3,
            "ended_rate": 1 / 2,
            "empty_rate": 1 / 3,
            "degenerate_rate": 1 / 3,
            "repetition_mean": 0.9 / 3,
            "length_tokens_mean": 20.0,
        }
    )


def test_summary_of_nothing_has_no_rates():
    assert summarize_health([]) == {
        "count": 0,
        "ended_rate": None,
        "empty_rate": None,
        "degenerate_rate": None,
        "repetition_mean": None,
        "length_tokens_mean": None,
    }
