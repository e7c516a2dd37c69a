"""Sliding-window (local) attention layers under the ``shared`` and ``packed`` layouts.

The windows here (4-7 positions) are shorter than every test sequence (16-22 tokens; rows
of 22-28 tokens, 50 when two pairs are packed), and
each model has local layers (Gemma-2 and Gemma-3 alternate local and global layers, Qwen2
with ``use_sliding_window`` slides its upper layers, Mistral slides them all). The reference
is the model's own forward on ``[prompt + response]``, one plain sequence at a time, where
transformers builds its own per-layer masks.
"""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

from slimepo.attention import dense_mask, flex_block_mask
from slimepo.config import ConfigError, TrainConfig
from slimepo.data.collate import PairCollator
from slimepo.logprobs import attention_mask, layer_windows, pair_token_logps
from slimepo.model import load_policy
from slimepo.scoring import score_pairs

from .test_forward import Pair, by_hand, grads_of, weighted_sum

# Prompts longer than the windows, so a response's first tokens still see part of the prompt
# and its later ones only their own response.
PAIRS = [
    Pair(list(range(1, 13)), list(range(13, 20)), list(range(20, 29))),
    Pair(list(range(30, 40)), list(range(40, 46)), list(range(46, 52))),
    Pair(list(range(3, 17)), list(range(50, 55)), list(range(55, 63))),
]
PACK_TOKENS = 50

SLIDING = {
    "gemma2": dict(sliding_window=6, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": dict(sliding_window=5, layer_types=["sliding_attention", "full_attention"]),
    "qwen2": dict(use_sliding_window=True, sliding_window=7, max_window_layers=1),
    "mistral": dict(sliding_window=4),
}


def windowed_model(kind: str):
    """A random 2-layer model of ``kind`` with :data:`SLIDING`'s window (fp32)."""
    config = AutoConfig.for_model(
        kind, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, pad_token_id=0, **SLIDING[kind],
    )
    torch.manual_seed(0)
    # Gemma-2's attention logit soft-capping has no SDPA path in transformers.
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager" if kind == "gemma2" else "sdpa")


def reference_logps(model, pairs):
    """``by_hand`` log-probs as ``[pairs, tokens]`` tensors (0-padded), like ``pair_token_logps``."""
    out = by_hand(model, pairs)
    return tuple(torch.nn.utils.rnn.pad_sequence(out[side], batch_first=True) for side in ("chosen", "rejected"))


def test_the_models_have_local_layers_shorter_than_the_sequences():
    for kind, expected in [
        ("gemma2", {"sliding_attention": 6, "full_attention": None}),
        ("gemma3_text", {"sliding_attention": 5, "full_attention": None}),
        ("qwen2", {"full_attention": None, "sliding_attention": 7}),
        ("mistral", {"sliding_attention": 4}),
    ]:
        assert layer_windows(windowed_model(kind)) == expected, kind
    shortest = min(len(p.prompt_ids) + min(len(p.chosen_ids), len(p.rejected_ids)) for p in PAIRS)
    assert shortest > 2 * max(options["sliding_window"] for options in SLIDING.values())


@pytest.mark.parametrize("kind", sorted(SLIDING))
@pytest.mark.parametrize("layout", ["shared", "packed"])
def test_shared_and_packed_values_and_gradients_equal_the_unshared_forward(kind, layout):
    model = windowed_model(kind)
    expected = reference_logps(model, PAIRS)
    expected_grads = grads_of(model, weighted_sum(*expected))
    batch = PairCollator(0, layout=layout, pack_tokens=PACK_TOKENS)(PAIRS)
    if layout == "packed":
        assert batch["input_ids"].shape == (2, 50)  # pairs 0 and 1 share a row
    got = pair_token_logps(model, batch, chunk_size=3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    got_grads = grads_of(model, weighted_sum(*got))
    assert got_grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(got_grads[name], expected_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", sorted(SLIDING))
def test_one_full_attention_mask_for_every_layer_sees_beyond_the_window(kind):
    """What slimepo computed before it built a mask per layer type: the check above would fail."""
    model = windowed_model(kind)
    expected = reference_logps(model, PAIRS)
    batch = PairCollator(0, layout="shared")(PAIRS)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    logps = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), -1)
    source, target = batch["rejected_source"][0, :9], batch["rejected_target"][0, :9]
    single_mask = logps[source, batch["input_ids"].reshape(-1)[target]]
    assert (single_mask - expected[1][0]).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["shared", "packed"])
def test_the_sliding_mask_is_transformers_own_on_each_unshared_sequence(layout):
    """Cut each ``[prompt + response]`` out of the row's mask: it is what transformers builds for it alone."""
    window = 5
    batch = PairCollator(0, layout=layout, pack_tokens=PACK_TOKENS)(PAIRS)
    ids = batch["pair_ids"], batch["part_ids"], batch["position_ids"]
    allowed = dense_mask(*ids, window)[:, 0] == 0
    rows, width = batch["input_ids"].shape
    flex = flex_block_mask(*ids, window)
    from torch.nn.attention.flex_attention import create_mask

    assert torch.equal(create_mask(flex.mask_mod, rows, 1, width, width)[:, 0], allowed)
    for side in ("chosen", "rejected"):
        for i, p in enumerate(PAIRS):
            n_prompt, n = len(p.prompt_ids), len(getattr(p, f"{side}_ids"))
            response = batch[f"{side}_target"][i, :n]
            row = int(response[0]) // width
            prompt_last = int(batch[f"{side}_source"][i, 0]) % width
            columns = torch.cat([torch.arange(prompt_last - n_prompt + 1, prompt_last + 1), response % width])
            own = sdpa_mask(batch_size=1, q_length=n_prompt + n, kv_length=n_prompt + n,
                            mask_function=sliding_window_causal_mask_function(window), allow_is_causal_skip=False)
            cut = allowed[row][columns[:, None], columns[None, :]]
            assert torch.equal(cut, own[0, 0]), (side, i)
            assert not cut.all(dim=1)[-1]  # the window really cuts the last token's view


def test_layouts_refuse_attention_their_masks_cannot_express():
    batch = PairCollator(0, layout="shared")(PAIRS)
    model = windowed_model("gemma3_text")
    model.config.layer_types = ["chunked_attention", "full_attention"]
    with pytest.raises(ValueError, match="--layout shared and packed .* layer types chunked_attention; use --layout separate"):
        pair_token_logps(model, batch)
    model = windowed_model("gemma3_text")
    model.config.use_bidirectional_attention = True
    with pytest.raises(ValueError, match="--layout shared and packed .* bidirectionally"):
        pair_token_logps(model, batch)
    model = windowed_model("mistral")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="--layout shared and packed .* attn_implementation flash_attention_2"):
        attention_mask(model, batch)
    # separate rows keep the model's own masks, whatever its attention
    assert attention_mask(model, PairCollator(0, layout="separate")(PAIRS)).ndim == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SLIDING))
def test_flex_attention_block_masks_score_the_unshared_log_probs(kind):
    """FlexAttention has no backward pass on CPU: scoring only (training uses it on CUDA)."""
    model = windowed_model(kind)
    expected = reference_logps(model, PAIRS)
    model.set_attn_implementation("flex_attention")
    for layout in ("shared", "packed"):
        scores = score_pairs(model, PAIRS, pad_token_id=0, batch_size=3, chunk_size=2, layout=layout)
        torch.testing.assert_close(scores.chosen_logps, expected[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores.rejected_logps, expected[1], rtol=1e-5, atol=1e-5)


def test_loading_a_policy_refuses_a_layout_its_attention_cannot_take(tmp_path):
    model = windowed_model("gemma3_text")
    model.config.use_bidirectional_attention = True
    model.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="layout: --layout shared and packed .* bidirectionally"):
        load_policy(TrainConfig(model=str(tmp_path), layout="packed", use_lora=False))
    assert load_policy(TrainConfig(model=str(tmp_path), layout="separate", use_lora=False)) is not None
