"""Pair selection: best against worst or every pair, the gap rule, and every drop counted."""

import pytest

from slimepo.pairs.build import Answer, PairCounts, select_pairs


def answers(*scored):
    return [Answer(i, text, score) for i, (text, score) in enumerate(scored)]


def test_best_worst_pairs_the_first_best_with_the_first_worst():
    counts = PairCounts()
    [(chosen, rejected)] = select_pairs("p", answers(("a", 0.5), ("b", 1.0), ("c", 0.0), ("d", 1.0), ("e", 0.0)),
                                        "best-worst", 0.0, counts)
    assert (chosen.index, rejected.index) == (1, 2)
    assert counts.pairs == 1 and counts.prompts_with_pairs == 1 and not counts.prompts_without_pair


def test_a_prompt_whose_answers_all_score_the_same_is_dropped_and_counted():
    counts = PairCounts()
    assert select_pairs("tied", answers(("a", 1.0), ("b", 1.0), ("c", 1.0)), "best-worst", 0.0, counts) == []
    assert select_pairs("tied-all", answers(("a", 0.0), ("b", 0.0)), "all", 0.0, counts) == []
    assert counts.prompts_without_pair == {"all_tied": ["tied", "tied-all"]}
    assert counts.candidates_dropped == {"tie": 2} and counts.pairs == 0


def test_min_gap_drops_smaller_gaps_but_keeps_a_gap_equal_to_it():
    counts = PairCounts()
    third = answers(("a", 2 / 3), ("b", 1 / 3))
    assert len(select_pairs("equal", third, "best-worst", 0.3333333333, counts)) == 1
    assert select_pairs("small", third, "best-worst", 0.5, counts) == []
    assert counts.prompts_without_pair == {"below_gap": ["small"]} and counts.candidates_dropped == {"below_gap": 1}


def test_all_pairs_every_pair_over_the_gap_higher_score_chosen_and_counts_ties():
    counts = PairCounts()
    pairs = select_pairs("p", answers(("a", 0.0), ("b", 1.0), ("c", 1.0), ("d", 0.5)), "all", 0.0, counts)
    assert sorted((c.index, r.index) for c, r in pairs) == [(1, 0), (1, 3), (2, 0), (2, 3), (3, 0)]
    assert counts.candidates_dropped == {"tie": 1} and counts.pairs == 5


def test_unscored_and_empty_answers_never_stand_in_a_pair_and_are_counted():
    counts = PairCounts()
    [(chosen, rejected)] = select_pairs("p", answers(("good", 1.0), ("   ", 0.0), ("meh", None), ("bad", 0.2)),
                                        "best-worst", 0.0, counts)
    assert (chosen.text, rejected.text) == ("good", "bad")
    assert counts.answers_left_out == {"empty": 1, "unscored": 1}
    assert select_pairs("q", answers(("only", 1.0), ("x", None)), "best-worst", 0.0, counts) == []
    assert counts.prompts_without_pair == {"too_few_answers": ["q"]}


def test_identical_texts_and_repeated_pairs_are_dropped_and_counted():
    counts = PairCounts()
    assert select_pairs("same", answers(("same", 9.0), ("same ", 2.0)), "best-worst", 0.0, counts) == []
    pairs = select_pairs("dup", answers(("good", 1.0), ("good", 1.0), ("bad", 0.0)), "all", 0.0, counts)
    assert [(c.index, r.index) for c, r in pairs] == [(0, 2)]
    assert counts.candidates_dropped == {"identical_text": 1, "tie": 1, "duplicate": 1}
    assert counts.prompts_without_pair == {"identical_text": ["same"]}
    assert counts.to_dict()["prompts_without_pair"] == {"identical_text": 1}


def cut(*scored):
    """Answers with their end: (text, score, ended)."""
    return [Answer(i, text, score, ended) for i, (text, score, ended) in enumerate(scored)]


PROMPT_WITH_A_CUT_BEST = (("long and good", 1.0, False), ("ok", 0.5, True), ("bad", 0.0, True), ("cut, bad", 0.0, False))


def test_by_default_a_cut_answer_pairs_as_any_other():
    counts = PairCounts()
    [(chosen, rejected)] = select_pairs("p", cut(*PROMPT_WITH_A_CUT_BEST), "best-worst", 0.0, counts)
    assert (chosen.index, rejected.index) == (0, 2)
    assert not counts.answers_left_out and not counts.candidates_dropped


def test_reject_never_chooses_a_cut_answer_but_may_reject_one():
    counts = PairCounts()
    [(chosen, rejected)] = select_pairs("p", cut(*PROMPT_WITH_A_CUT_BEST), "best-worst", 0.0, counts, "reject")
    assert (chosen.index, rejected.index) == (1, 2)  # the best that ended, against the first worst of all
    worst_is_cut = cut(("good", 1.0, True), ("cut", 0.0, False))
    [(chosen, rejected)] = select_pairs("q", worst_is_cut, "best-worst", 0.0, counts, "reject")
    assert (chosen.index, rejected.index) == (0, 1)

    pairs = select_pairs("r", cut(*PROMPT_WITH_A_CUT_BEST), "all", 0.0, counts, "reject")
    # every candidate: (0,1) (0,2) (0,3) chosen cut; (1,2) (1,3) kept; (2,3) a tie
    assert sorted((c.index, r.index) for c, r in pairs) == [(1, 2), (1, 3)]
    assert counts.candidates_dropped == {"cut_chosen": 3, "tie": 1}

    none_ended = cut(("a", 1.0, False), ("b", 0.0, False))
    assert select_pairs("s", none_ended, "best-worst", 0.0, counts, "reject") == []
    assert counts.prompts_without_pair == {"none_ended": ["s"]} and counts.pairs == 4


def test_drop_leaves_cut_answers_out_of_every_pair_and_counts_them():
    counts = PairCounts()
    [(chosen, rejected)] = select_pairs("p", cut(*PROMPT_WITH_A_CUT_BEST), "best-worst", 0.0, counts, "drop")
    assert (chosen.index, rejected.index) == (1, 2)
    assert counts.answers_left_out == {"cut": 2}
    assert select_pairs("q", cut(("a", 1.0, False), ("b", 0.0, True)), "best-worst", 0.0, counts, "drop") == []
    assert counts.prompts_without_pair == {"too_few_answers": ["q"]}


def test_an_unknown_cut_answers_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="cut_answers must be one of keep, reject, drop, got 'never'"):
        select_pairs("p", cut(*PROMPT_WITH_A_CUT_BEST), "best-worst", 0.0, PairCounts(), "never")
