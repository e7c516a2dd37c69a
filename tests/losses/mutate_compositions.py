"""Mutation check of dpo-norm, sft's reductions, the weighted composition and the rpo preset.

``python tests/losses/mutate_compositions.py`` builds each mutant (one text replacement in
``slimepo/losses/pairwise.py`` or ``composite.py``, or one changed preset), puts it where
``get_loss`` finds it, runs the hand-value tests (``test_compositions.py``, ``test_baselines.py``
and ``test_registry.py``'s preset pins) in this process after checking they pass unmutated, and
exits 1 naming every mutant that all tests let through. ``test_mutations.py`` runs it in CI.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable
from pathlib import Path

from mutate_slime import mutant_source, preset_changed, run_mutants

import slimepo.losses as losses
from slimepo.testing import module_from_source

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "slimepo" / "losses"
TESTS = [
    str(ROOT / "tests" / "losses" / "test_compositions.py"),
    str(ROOT / "tests" / "losses" / "test_baselines.py"),
    str(ROOT / "tests" / "losses" / "test_registry.py") + "::test_every_default_of_every_preset_is_pinned",
]

DPO_NORM_RATIOS = "return chosen.mean - ref_chosen / chosen.length, rejected.mean - ref_rejected / rejected.length"
SFT_TOKENS = '            nll = chosen_token_nll(chosen)\n        return nll, {"nll": nll}, chosen.mean, rejected.mean'
TOTAL = "total = total + weight * value"
WEIGHT_CHECK = "math.isfinite(weight) and weight > 0"
#: (what it breaks, module file, text in it, replacement)
SOURCE_MUTANTS = [
    ("dpo-norm: reference as a sum", "pairwise.py", DPO_NORM_RATIOS, "return chosen.mean - ref_chosen, rejected.mean - ref_rejected"),
    ("dpo-norm: policy as a sum", "pairwise.py", DPO_NORM_RATIOS,
     "return chosen.sum - ref_chosen / chosen.length, rejected.sum - ref_rejected / rejected.length"),
    ("dpo-norm: reference lengths swapped", "pairwise.py", DPO_NORM_RATIOS,
     "return chosen.mean - ref_chosen / rejected.length, rejected.mean - ref_rejected / chosen.length"),
    ("dpo-norm: reference left out", "pairwise.py", DPO_NORM_RATIOS, "return chosen.mean, rejected.mean"),
    ("dpo-norm: reference added", "pairwise.py", DPO_NORM_RATIOS,
     "return chosen.mean + ref_chosen / chosen.length, rejected.mean + ref_rejected / rejected.length"),
    ("dpo-norm: default β 0.1 (TRL's)", "pairwise.py", 'param(5.0, "β', 'param(0.1, "β'),
    ("dpo: reference left out", "pairwise.py", "return chosen.sum - ref_chosen, rejected.sum - ref_rejected",
     "return chosen.sum, rejected.sum"),
    ("dpo: rewards without β", "pairwise.py", "chosen_rewards = self.beta * chosen_ratio", "chosen_rewards = chosen_ratio"),
    ("sft: sequence reduced over batch tokens", "pairwise.py", "            nll = -chosen.pair_mean(chosen.mean)\n",
     "            nll = chosen_token_nll(chosen)\n"),
    ("sft: batch_tokens reduced per sequence", "pairwise.py", SFT_TOKENS,
     SFT_TOKENS.replace("nll = chosen_token_nll(chosen)", "nll = -chosen.pair_mean(chosen.mean)")),
    ("sft: reductions swapped", "pairwise.py", 'if self.reduction == "sequence":', 'if self.reduction != "sequence":'),
    ("sft: sign", "pairwise.py", "nll = -chosen.pair_mean(chosen.mean)", "nll = chosen.pair_mean(chosen.mean)"),
    ("sft: on the rejected side", "pairwise.py", "nll = -chosen.pair_mean(chosen.mean)", "nll = -rejected.pair_mean(rejected.mean)"),
    ("sft: default reduction", "pairwise.py", 'param(\n        "sequence",', 'param(\n        "batch_tokens",'),
    ("token NLL: mean over pairs", "pairwise.py", "return -chosen.token_mean(chosen.logps)",
     "return -chosen.pair_mean(chosen.logps.sum(-1))"),
    ("composite: weights dropped", "composite.py", TOTAL, "total = total + value"),
    ("composite: only the last term", "composite.py", TOTAL, "total = weight * value"),
    ("composite: a weight squared", "composite.py", TOTAL, "total = total + weight * weight * value"),
    ("composite: rewards of the last term", "composite.py", "*rewards[0]", "*rewards[-1]"),
    ("composite: reference only when every term needs one", "composite.py", "any(loss.requires_reference",
     "all(loss.requires_reference"),
    ("composite: term metrics weighted", "composite.py", 'parts.update({f"{term}/{part}": v for',
     'parts.update({f"{term}/{part}": weight * v for'),
    ("composite: term metrics not named by term", "composite.py", 'parts.update({f"{term}/{part}": v for',
     "parts.update({part: v for"),
    ("composite: total metric is the last term's", "composite.py", 'parts["total"] = total', 'parts["total"] = value'),
    ("composite: weight 0 allowed", "composite.py", WEIGHT_CHECK, "math.isfinite(weight) and weight >= 0"),
    ("composite: infinite weight allowed", "composite.py", WEIGHT_CHECK, "weight > 0"),
    ("composite: boolean weight allowed", "composite.py", "isinstance(weight, bool) or ", ""),
    ("composite: weights missing from hyperparameters", "composite.py", '            values[f"{term}.weight"] = weight\n', ""),
    ("composite: weight 1 written in its name", "composite.py", 'name if weight == 1 else f"{name}={_number(weight)}"',
     'f"{name}={_number(weight)}"'),
    ("composite: integral weights written as floats", "composite.py",
     "str(int(weight)) if float(weight).is_integer() else repr(float(weight))", "repr(float(weight))"),
]
RPO = losses.PRESETS["rpo"]
#: (what it breaks, preset, its wrong (spec, parameters))
PRESET_MUTANTS = [
    ("rpo: β 0.2", "rpo", (RPO[0], {**RPO[1], "dpo": {"beta": 0.2}})),
    ("rpo: TRL's token-mean NLL", "rpo", (RPO[0], {**RPO[1], "sft": {"reduction": "batch_tokens"}})),
    ("rpo: NLL weight 0.5", "rpo", ("dpo,sft=0.5", RPO[1])),
    ("rpo: no NLL", "rpo", ("dpo", {"beta": 0.1})),
    ("rpo: on dpo-norm", "rpo", ("dpo-norm,sft", {"dpo-norm": {"beta": 0.1}, "sft": RPO[1]["sft"]})),
]


def install(module_name: str, mutant: types.ModuleType) -> Callable[[], None]:
    """Put the mutant's classes and functions where ``get_loss`` finds them; return the undo."""
    classes = dict(losses._CLASSES)
    names = {name: value for name, value in vars(losses).items() if getattr(value, "__module__", None) == module_name}
    for key, cls in classes.items():
        if cls.__module__ == module_name:
            losses._CLASSES[key] = getattr(mutant, cls.__name__)
    for name in names:
        setattr(losses, name, getattr(mutant, name))
    forget_test_modules()

    def undo() -> None:
        losses._CLASSES.update(classes)
        for name, value in names.items():
            setattr(losses, name, value)
        forget_test_modules()

    return undo


def forget_test_modules() -> None:
    """Test modules bind ``from slimepo.losses import ...`` when imported: import them afresh."""
    for name in [name for name in sys.modules if name.startswith("test_")]:
        del sys.modules[name]


def main() -> int:
    sources = {file: (PACKAGE / file).read_text(encoding="utf-8") for file in ("pairwise.py", "composite.py")}
    mutants = []
    for index, (label, file, old, new) in enumerate(SOURCE_MUTANTS):
        mutant = module_from_source(mutant_source(sources[file], label, old, new, file), f"slimepo_mutant_{1000 + index}")
        mutants.append((label, functools.partial(install, f"slimepo.losses.{file.removesuffix('.py')}", mutant)))
    mutants += [(label, preset_changed(preset, value)) for label, preset, value in PRESET_MUTANTS]
    return run_mutants("the compositions", mutants, TESTS)


if __name__ == "__main__":
    sys.exit(main())
