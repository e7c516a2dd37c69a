"""The vllm engine against the hf engine on the embedded default model: greedy float32 answers give
the same token ids, without and with a LoRA adapter. Runs only where vLLM is installed (the venv of
``make vllm-env``); ``make vllm-check`` runs the same comparison on more prompts and a real server."""

import pytest

from slimepo.generation import vllm_installed

pytestmark = pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed here: `make vllm-check` "
                                "(venv of `make vllm-env`) runs these")


@pytest.mark.slow
def test_vllm_greedy_answers_are_the_hf_engines_token_ids_without_and_with_an_adapter(load_script, tmp_path):
    check = load_script("vllm_check")
    from slimepo.model import default_model_path

    model_path = str(default_model_path())
    adapter = check.make_adapter(model_path, tmp_path / "adapter")
    outcome = check.check_equality(model_path, adapter, prompts=4, max_new_tokens=32)
    for label, result in outcome["results"].items():
        assert result["equal"] == result["prompts"] == 4, (label, result["rows"])
    assert outcome["adapter_changes_answers"] > 0
