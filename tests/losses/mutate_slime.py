"""Mutation check of SLIME: every single change of a term or constant must fail a test.

``python tests/losses/mutate_slime.py`` builds each mutant of ``slimepo/losses/slime.py`` (one
text replacement) or of a preset, puts it in the loss registry, runs ``tests/losses/test_slime.py``
and ``test_registry.py``'s preset pins in this process (after checking they pass unmutated), and exits 1 naming every mutant that
all tests let through. ``test_mutations.py`` runs it in CI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import slimepo.losses as losses
from slimepo.testing import module_from_source, mutated

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "slimepo" / "losses" / "slime.py"
TESTS = [
    str(ROOT / "tests" / "losses" / "test_slime.py"),
    str(ROOT / "tests" / "losses" / "test_registry.py") + "::test_every_default_of_every_preset_is_pinned",
]

GATE = "torch.sigmoid(-k * (delta - self.soft_margin))"
#: (what it breaks, text in slime.py, replacement)
SOURCE_MUTANTS = [
    ("gate removed", f"hinge * {GATE}", "hinge"),
    ("gate centred at m_h", GATE, "torch.sigmoid(-k * (delta - self.hard_margin))"),
    ("gate slope k = 1", GATE, "torch.sigmoid(-1.0 * (delta - self.soft_margin))"),
    ("gate sign flipped", GATE, "torch.sigmoid(k * (delta - self.soft_margin))"),
    ("hinge at m_s", "F.relu(self.hard_margin - delta)", "F.relu(self.soft_margin - delta)"),
    ("hinge by clamp (gradient at m_h)", "F.relu(self.hard_margin - delta)", "(self.hard_margin - delta).clamp(min=0)"),
    ("λ_m dropped in dual", f"return self.margin_weight * hinge * {GATE}", f"return hinge * {GATE}"),
    ("λ_m dropped in hard", "            return self.margin_weight * hinge\n", "            return hinge\n"),
    ("hard mode gated", "            return self.margin_weight * hinge\n",
     f"            return self.margin_weight * hinge * {GATE}\n"),
    ("soft mode without 1/k", "F.softplus(-k * (delta - self.soft_margin)) / k", "F.softplus(-k * (delta - self.soft_margin))"),
    ("soft mode centred at m_h", "F.softplus(-k * (delta - self.soft_margin)) / k",
     "F.softplus(-k * (delta - self.hard_margin)) / k"),
    ("λ_m dropped in soft", "return self.margin_weight * F.softplus", "return F.softplus"),
    ("Δ reversed", "delta = chosen.mean - rejected.mean", "delta = rejected.mean - chosen.mean"),
    ("Δ on summed log-probs", "delta = chosen.mean - rejected.mean", "delta = chosen.sum - rejected.sum"),
    ("anchor sign", "anchor = -self.anchor_weight", "anchor = self.anchor_weight"),
    ("anchor on summed log-prob", "chosen.pair_mean(chosen.mean)", "chosen.pair_mean(chosen.sum)"),
    ("anchor on rejected", "-self.anchor_weight * chosen.pair_mean(chosen.mean)", "-self.anchor_weight * rejected.pair_mean(rejected.mean)"),
    ("stabilizer shift sign", "-rejected.logps - self.stabilizer_shift", "-rejected.logps + self.stabilizer_shift"),
    ("stabilizer on +ℓ", "-rejected.logps - self.stabilizer_shift", "rejected.logps - self.stabilizer_shift"),
    ("stabilizer power 2", ".pow(self.stabilizer_power)", ".pow(2.0)"),
    ("valid tokens from log-prob != 0", "torch.where(rejected.mask, phi,", "torch.where(rejected.logps != 0, phi,"),
    ("batch_tokens reduced per sequence", "reduced = rejected.token_mean(phi)", "reduced = rejected.pair_mean(phi.sum(-1) / rejected.length)"),
    ("sequence reduced over batch tokens", "reduced = rejected.pair_mean(phi.sum(-1) / rejected.length)", "reduced = rejected.token_mean(phi)"),
    ("λ_l dropped", "return self.stabilizer_weight * reduced", "return reduced"),
    ("stabilizer left out of the total", "loss = margin + anchor + stabilizer", "loss = margin + anchor"),
    ("anchor left out of the total", "loss = margin + anchor + stabilizer", "loss = margin + stabilizer"),
    ("margin left out of the total", "loss = margin + anchor + stabilizer", "loss = anchor + stabilizer"),
    ("default λ_m", 'param(1.0, "λ_m', 'param(0.5, "λ_m'),
    ("default m_h", 'param(1.5, "m_h', 'param(2.0, "m_h'),
    ("default m_s", 'param(1.0, "m_s', 'param(0.5, "m_s'),
    ("default k", 'param(2.5, "k', 'param(1.0, "k'),
    ("default λ_w", 'param(0.1, "λ_w', 'param(0.8, "λ_w'),
    ("default λ_l", 'param(5e-4, "λ_l', 'param(5e-3, "λ_l'),
    ("default δ", 'param(1.25, "δ', 'param(0.5, "δ'),
    ("default p", 'param(2.5, "p', 'param(2.0, "p'),
    ("default margin mode", 'param("dual", "dual', 'param("hard", "dual'),
    ("default reduction", 'param(\n        "batch_tokens",', 'param(\n        "sequence",'),
]
#: (what it breaks, preset, parameter, wrong value)
PRESET_MUTANTS = [
    ("slime-config λ_w", "slime-config", "anchor_weight", 0.1),
    ("slime-config δ", "slime-config", "stabilizer_shift", 1.25),
    ("slime-no-anchor keeps an anchor", "slime-no-anchor", "anchor_weight", 0.1),
    ("slime-no-stabilizer keeps a stabilizer", "slime-no-stabilizer", "stabilizer_weight", 5e-4),
    ("slime-hard is dual", "slime-hard", "margin_mode", "dual"),
    ("slime-soft is dual", "slime-soft", "margin_mode", "dual"),
]


def tests_pass(tests: list[str] = TESTS) -> bool:
    return pytest.main(["-q", "-x", "--tb=no", "--no-header", "-p", "no:cacheprovider", *tests]) == 0


Installer = Callable[[], Callable[[], None]]


def mutant_source(text: str, label: str, old: str, new: str, where: object) -> str:
    try:
        return mutated(text, old, new, str(where))
    except ValueError as error:
        raise SystemExit(f"mutant {label!r}: {error}") from None


def preset_changed(name: str, value: tuple) -> Installer:
    """Put ``value`` in place of the preset ``name``; the returned undo puts the kept one back."""

    def install() -> Callable[[], None]:
        kept = losses.PRESETS[name]
        losses.PRESETS[name] = value
        return lambda: losses.PRESETS.__setitem__(name, kept)

    return install


def run_mutants(what: str, mutants: list[tuple[str, Installer]], tests: list[str]) -> int:
    """Run ``tests`` with each mutant installed (after checking they pass unmutated); print the
    count and every mutant all tests let through; 1 if any did."""
    if not tests_pass(tests):
        raise SystemExit("the tests fail on the unmutated code: fix them first")
    survivors = []
    for label, install in mutants:
        undo = install()
        try:
            if tests_pass(tests):
                survivors.append(label)
        finally:
            undo()
    print(f"\n{len(mutants) - len(survivors)} of {len(mutants)} mutants of {what} fail a test")
    for label in survivors:
        print(f"SURVIVED: {label}")
    return 1 if survivors else 0


def slime_class(cls: type) -> Installer:
    def install() -> Callable[[], None]:
        losses._CLASSES["slime"] = cls
        return lambda: losses._CLASSES.__setitem__("slime", losses.SlimeLoss)

    return install


def main() -> int:
    original = SOURCE.read_text(encoding="utf-8")
    mutants = []
    for index, (label, old, new) in enumerate(SOURCE_MUTANTS):
        module = module_from_source(mutant_source(original, label, old, new, SOURCE), f"slimepo_mutant_{index}")
        mutants.append((label, slime_class(module.SlimeLoss)))
    for label, preset, parameter, value in PRESET_MUTANTS:
        kept = losses.PRESETS[preset]
        mutants.append((label, preset_changed(preset, (kept[0], {**kept[1], parameter: value}))))
    return run_mutants("SLIME", mutants, TESTS)


if __name__ == "__main__":
    sys.exit(main())
