"""The model-facing log-prob path: every layout and the chunked head give the same numbers.

The reference is computed by hand: each response scored from the model's own logits on
``[prompt + response]`` alone, one sequence at a time, with ``log_softmax``.
"""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from slimepo.attention import flex_block_mask
from slimepo.data.collate import LAYOUTS, PairCollator, without_rejected
from slimepo.logprobs import output_projection, pair_token_logps
from slimepo.scoring import score_pairs
from slimepo.testing import TINY_MODEL_KINDS, module_from_source, mutated, tiny_model


class Pair:
    def __init__(self, prompt, chosen, rejected):
        self.prompt_ids, self.chosen_ids, self.rejected_ids = prompt, chosen, rejected


PAIRS = [
    Pair([5, 6, 7, 8], [9, 10, 11], [12, 13]),
    Pair([20, 21], [22, 23, 24, 25, 26], [27]),
    Pair([30, 31, 32, 33, 34, 35], [36], [37, 38, 39]),
]


def by_hand(model, pairs):
    """Log-probs of each response token, one unpadded sequence at a time."""
    out = {"chosen": [], "rejected": []}
    for p in pairs:
        for side in out:
            response = getattr(p, f"{side}_ids")
            ids = torch.tensor([p.prompt_ids + response])
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            n = len(p.prompt_ids)
            out[side].append(torch.stack([logps[n - 1 + k, t] for k, t in enumerate(response)]))
    return out


def weighted_sum(chosen, rejected):
    """A loss that weighs every token differently, so gradients test the index bookkeeping."""
    w = torch.arange(1, chosen.numel() + 1, dtype=torch.float32).view_as(chosen)
    v = torch.arange(1, rejected.numel() + 1, dtype=torch.float32).view_as(rejected)
    return (chosen * w.sin()).sum() + (rejected * v.cos()).sum()


def grads_of(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", TINY_MODEL_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_every_layout_and_head_path_gives_the_unshared_log_probs(kind, layout, chunk_size):
    model = tiny_model(kind)
    reference = by_hand(model, PAIRS)
    batch = PairCollator(pad_token_id=0, layout=layout, pack_tokens=24)(PAIRS)
    chosen, rejected = pair_token_logps(model, batch, chunk_size=chunk_size)
    for i, p in enumerate(PAIRS):
        torch.testing.assert_close(chosen[i, : len(p.chosen_ids)], reference["chosen"][i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rejected[i, : len(p.rejected_ids)], reference["rejected"][i], rtol=1e-5, atol=1e-5)
    assert torch.equal(chosen[~batch["chosen_mask"]], torch.zeros_like(chosen[~batch["chosen_mask"]]))


def log_sum_sq_by_hand(model, pairs):
    """``log Σ_v π(v)²`` at each response token's position from the full logits (torch.logsumexp),
    one unpadded sequence at a time."""
    out = {"chosen": [], "rejected": []}
    with torch.no_grad():
        for p in pairs:
            for side in out:
                response = getattr(p, f"{side}_ids")
                logits = model(input_ids=torch.tensor([p.prompt_ids + response])).logits[0].float()
                stat = torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1)
                n = len(p.prompt_ids)
                out[side].append(stat[n - 1 : n - 1 + len(response)])
    return out


def check_log_sum_sq_in_every_layout_and_head_path(pair_token_logps, model, reference):
    for layout in LAYOUTS:
        for chunk_size in (None, 3):
            batch = PairCollator(pad_token_id=0, layout=layout, pack_tokens=24)(PAIRS)
            chosen, rejected, chosen_stat, rejected_stat = pair_token_logps(
                model, batch, chunk_size=chunk_size, log_sum_sq=True)
            for i, p in enumerate(PAIRS):
                torch.testing.assert_close(chosen_stat[i, : len(p.chosen_ids)], reference["chosen"][i], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(rejected_stat[i, : len(p.rejected_ids)], reference["rejected"][i], rtol=1e-5,
                                           atol=1e-5)
            assert not chosen_stat.requires_grad and not chosen_stat[~batch["chosen_mask"]].any()
            for a, b in zip((chosen, rejected), pair_token_logps(model, batch, chunk_size=chunk_size)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", TINY_MODEL_KINDS)
def test_every_layout_and_head_path_gives_the_log_sum_sq_of_the_full_logits(kind):
    model = tiny_model(kind)
    check_log_sum_sq_in_every_layout_and_head_path(pair_token_logps, model, log_sum_sq_by_hand(model, PAIRS))


@pytest.mark.parametrize(("label", "old", "new"), [
    ("full logits: log Σ π", "torch.logsumexp(2 * all_logps.detach(), -1)", "torch.logsumexp(all_logps.detach(), -1)"),
    ("full logits: logsumexp(2z) alone", "torch.logsumexp(2 * all_logps.detach(), -1)", "torch.logsumexp(2 * selected.detach(), -1)"),
    ("sides of the statistic swapped", "(*by_side(logps), *by_side(sums))", "(*by_side(logps), *reversed(by_side(sums)))"),
])
def test_every_mutant_of_the_statistic_in_pair_token_logps_fails(label, old, new):
    import slimepo.logprobs

    path = Path(slimepo.logprobs.__file__)
    module = module_from_source(mutated(path.read_text(encoding="utf-8"), old, new, path), "slimepo_logprobs_mutant")
    model = tiny_model("llama")
    with pytest.raises(AssertionError):
        check_log_sum_sq_in_every_layout_and_head_path(module.pair_token_logps, model, log_sum_sq_by_hand(model, PAIRS))


@pytest.mark.parametrize("kind", TINY_MODEL_KINDS)
@pytest.mark.parametrize("layout", ["shared", "packed"])
def test_shared_and_packed_gradients_equal_the_separate_layout(kind, layout):
    model = tiny_model(kind)
    separate = PairCollator(pad_token_id=0, layout="separate")(PAIRS)
    expected = grads_of(model, weighted_sum(*pair_token_logps(model, separate, chunk_size=None)))
    batch = PairCollator(pad_token_id=0, layout=layout, pack_tokens=24)(PAIRS)
    got = grads_of(model, weighted_sum(*pair_token_logps(model, batch, chunk_size=2)))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_layouts_process_fewer_tokens_and_pack_rows_within_the_budget():
    separate = PairCollator(0, layout="separate")(PAIRS)
    shared = PairCollator(0, layout="shared")(PAIRS)
    packed = PairCollator(0, layout="packed", pack_tokens=24)(PAIRS)
    prompt_tokens = sum(len(p.prompt_ids) for p in PAIRS)
    assert int(separate["num_tokens"]) - int(shared["num_tokens"]) == prompt_tokens
    assert int(packed["num_tokens"]) == int(shared["num_tokens"])
    assert packed["input_ids"].shape == (2, 17)  # pairs of 9 + 8 tokens share a row (17 <= 24); 10 go alone
    # positions restart with each packed pair; both responses continue the prompt
    assert packed["position_ids"][0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5]
    assert packed["position_ids"][0, 9:17].tolist() == [0, 1, 2, 3, 4, 5, 6, 2]


def test_packing_is_first_fit_and_by_default_never_lengthens_a_row():
    sized = [Pair([1] * 6, [2] * 2, [3] * 2), Pair([4] * 2, [5], [6]), Pair([7] * 3, [8] * 2, [9]), Pair([1] * 3, [2], [3])]
    # sizes 10, 4, 6, 5; default budget = the longest pair (10): rows [10], [4 + 6], [5]
    packed = PairCollator(0, layout="packed")(sized)
    assert packed["input_ids"].shape == (3, 10)
    assert packed["pair_ids"].tolist() == [[0] * 10, [1] * 4 + [2] * 6, [3] * 5 + [-1] * 5]
    # budget 12: 10 | 4 + 6 | 5 (no row has room for the 5)
    assert PairCollator(0, layout="packed", pack_tokens=12)(sized)["input_ids"].shape == (3, 10)
    # budget 15: the 4 joins the 10 (14); the 6 opens a row; the 5 fits only beside the 6
    wide = PairCollator(0, layout="packed", pack_tokens=15)(sized)
    assert wide["pair_ids"].tolist() == [[0] * 10 + [1] * 4, [2] * 6 + [3] * 5 + [-1] * 3]


def test_first_fit_packing_out_of_order_gives_the_unshared_log_probs():
    pairs = [Pair([5, 6, 7, 8], [9, 10], [11, 12, 13]), Pair([20, 21, 22, 23, 24, 25], [26, 27, 28], [29, 30, 31]),
             Pair([40, 41, 42], [43, 44], [45, 46, 47])]  # sizes 9, 12, 8: budget 20 puts pair 2 beside pair 0
    batch = PairCollator(0, layout="packed", pack_tokens=20)(pairs)
    assert batch["pair_ids"].tolist() == [[0] * 9 + [2] * 8, [1] * 12 + [-1] * 5]
    model = tiny_model("llama")
    reference = by_hand(model, pairs)
    chosen, rejected = pair_token_logps(model, batch, chunk_size=3)
    for i, p in enumerate(pairs):
        torch.testing.assert_close(chosen[i, : len(p.chosen_ids)], reference["chosen"][i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rejected[i, : len(p.rejected_ids)], reference["rejected"][i], rtol=1e-5, atol=1e-5)


def test_block_mask_isolates_responses_and_pairs():
    batch = PairCollator(0, layout="packed", pack_tokens=24)(PAIRS[:2])
    allowed = batch["attention_mask"][0, 0] == 0
    # pair 0: prompt 0-3, chosen 4-6, rejected 7-8; pair 1 starts at 9
    assert allowed[7, :4].all() and not allowed[7, 4:7].any() and allowed[7, 7]
    assert allowed[6, 4:7].all() and not allowed[6, 7:].any()
    assert not allowed[9:, :9].any()


@pytest.mark.parametrize("layout", ["shared", "packed"])
def test_flex_block_mask_allows_exactly_what_the_dense_mask_allows(layout):
    from torch.nn.attention.flex_attention import create_mask

    batch = PairCollator(0, layout=layout, pack_tokens=24)(PAIRS)
    block_mask = flex_block_mask(batch["pair_ids"], batch["part_ids"], batch["position_ids"])
    rows, width = batch["input_ids"].shape
    assert block_mask.shape == (rows, 1, width, width)
    dense_allowed = batch["attention_mask"] == 0
    assert torch.equal(create_mask(block_mask.mask_mod, rows, 1, width, width), dense_allowed)


def test_flex_block_mask_skips_other_pairs_blocks_in_a_packed_row():
    from torch.nn.attention.flex_attention import create_block_mask

    long_pairs = [Pair(list(range(1, 201)), list(range(1, 61)), list(range(1, 61))) for _ in range(3)]  # 320 each
    batch = PairCollator(0, layout="packed", pack_tokens=1024, dense_mask=False)(long_pairs)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 960)
    block_mask = flex_block_mask(batch["pair_ids"], batch["part_ids"], batch["position_ids"])
    causal = create_block_mask(lambda b, h, q, k: k <= q, 1, None, 960, 960, device="cpu")
    # 128-token blocks: 8 query blocks; causal keeps 36 of 64; the pairs (0-319, 320-639, 640-959)
    # keep 1+2+3 | 2+3 | 1+2+3 per query block = 17 (block 2 holds the end of pair 0 and the start of pair 1).
    assert int(causal.kv_num_blocks.sum() + causal.full_kv_num_blocks.sum()) == 36
    assert int(block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()) == 17


def test_a_batch_without_its_dense_mask_gives_the_same_log_probs():
    model = tiny_model("qwen3")
    with_mask = PairCollator(0, layout="packed", pack_tokens=24)(PAIRS)
    without = PairCollator(0, layout="packed", pack_tokens=24, dense_mask=False)(PAIRS)
    assert "attention_mask" not in without
    for a, b in zip(pair_token_logps(model, with_mask), pair_token_logps(model, without)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_flex_attention_scores_equal_the_unshared_log_probs():
    """FlexAttention has no backward pass on CPU, so this checks scoring (no grad); training uses it on CUDA."""
    model = tiny_model("llama")
    reference = by_hand(model, PAIRS)
    model.set_attn_implementation("flex_attention")
    for layout in ("shared", "packed"):
        scores = score_pairs(model, PAIRS, pad_token_id=0, batch_size=3, chunk_size=2, layout=layout)
        for i, p in enumerate(PAIRS):
            torch.testing.assert_close(scores.chosen_logps[i, : len(p.chosen_ids)], reference["chosen"][i], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                scores.rejected_logps[i, : len(p.rejected_ids)], reference["rejected"][i], rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
def test_chunked_path_with_lora_and_trained_head_matches_exact(modules_to_save):
    model = tiny_model("llama")
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=modules_to_save, lora_dropout=0.0)
    )
    with torch.no_grad():  # make adapters and the saved head differ from the base
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    weight, _ = output_projection(peft_model)
    assert weight.requires_grad == (modules_to_save is not None)
    batch = PairCollator(0, layout="shared")(PAIRS)
    exact = pair_token_logps(peft_model, batch, chunk_size=None)
    exact_grads = grads_of(peft_model, weighted_sum(*exact))
    chunked = pair_token_logps(peft_model, batch, chunk_size=2)
    chunked_grads = grads_of(peft_model, weighted_sum(*chunked))
    for a, b in zip(chunked, exact):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for name in exact_grads:
        torch.testing.assert_close(chunked_grads[name], exact_grads[name], rtol=1e-5, atol=1e-5, msg=name)
    # The reference pass (adapters disabled) must use the original head, chunked or not.
    with peft_model.disable_adapter():
        disabled_chunked = pair_token_logps(peft_model, batch, chunk_size=2)
        disabled_exact = pair_token_logps(peft_model, batch, chunk_size=None)
    for a, b in zip(disabled_chunked, disabled_exact):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(disabled_exact[0], exact[0])


@pytest.mark.parametrize("kind", TINY_MODEL_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_batch_without_its_rejected_responses_scores_the_chosen_ones_as_unshared(kind, layout):
    """KTO's gradient forward after the step's KL batch is scored: the chosen side alone, by hand."""
    model = tiny_model(kind)
    reference = by_hand(model, PAIRS)
    full = PairCollator(pad_token_id=0, layout=layout, pack_tokens=24)(PAIRS)
    batch = without_rejected(full)
    for chunk_size in (None, 3):
        chosen, rejected = pair_token_logps(model, batch, chunk_size=chunk_size)
        assert rejected.shape == (len(PAIRS), 0)
        for i, p in enumerate(PAIRS):
            torch.testing.assert_close(chosen[i, : len(p.chosen_ids)], reference["chosen"][i], rtol=1e-5, atol=1e-5)
    expected = grads_of(model, weighted_sum(pair_token_logps(model, full, chunk_size=None)[0], torch.zeros(0)))
    got = grads_of(model, weighted_sum(pair_token_logps(model, batch, chunk_size=3)[0], torch.zeros(0)))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


def test_taking_the_rejected_responses_out_leaves_each_row_its_prompts_and_chosen_tokens_in_order():
    separate = without_rejected(PairCollator(0, layout="separate")(PAIRS))
    # the rejected rows gone, and the padding they needed (pair 2's row of 9)
    assert separate["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22, 23, 24, 25, 26], [30, 31, 32, 33, 34, 35, 36]]
    assert separate["attention_mask"].tolist() == [[1] * 7] * 3
    packed = PairCollator(0, layout="packed", pack_tokens=24)(PAIRS)  # rows: pairs 0 + 1, pair 2
    shrunk = without_rejected(packed)
    assert shrunk["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23, 24, 25, 26], [30, 31, 32, 33, 34, 35, 36] + [0] * 7]
    assert shrunk["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6]
    assert shrunk["pair_ids"].tolist() == [[0] * 7 + [1] * 7, [2] * 7 + [-1] * 7]
    assert (shrunk["part_ids"] != 2).all() and shrunk["attention_mask"].shape == (2, 1, 14, 14)
    # the chosen tokens' flat indices point at the same tokens as before
    for key in ("chosen_target", "chosen_source"):
        mask = packed["chosen_mask"]
        assert torch.equal(shrunk["input_ids"].reshape(-1)[shrunk[key][mask]], packed["input_ids"].reshape(-1)[packed[key][mask]])
    kept = {key for key in packed if not key.startswith("rejected_")}
    assert kept <= set(shrunk) and torch.equal(shrunk["num_tokens"], packed["num_tokens"])
    assert [shrunk[f"rejected_{k}"].shape for k in ("target", "source", "mask")] == [(3, 0)] * 3


def test_collator_refuses_empty_prompts_and_unknown_layouts():
    with pytest.raises(ValueError, match="at least one prompt token"):
        PairCollator(0)([Pair([], [1], [2])])
    with pytest.raises(ValueError, match="layout must be one of separate, shared, packed"):
        PairCollator(0, layout="zigzag")
