"""Problem 1's fine-tuning settings, written once: the homework's A–E and the control E0.

p1_finetune.py builds from them, reproduce.py plans its stages from them and the report prints them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    backbone: str             # where the backbone starts: "none" (random initialisation), "supervised" or "byol"
    frozen: bool              # the backbone stays fixed and only the classifier trains (a linear probe)
    pretraining: str          # the report's words for `backbone`
    reference: float | None   # the reference report's validation accuracy (SPEC §5); None for the control

    @property
    def needs_backbone(self) -> bool:
        return self.backbone != "none"

    @property
    def fine_tuning(self) -> str:
        return "classifier only" if self.frozen else "full model"


SUPERVISED = "supervised (given backbone)"
BYOL = "ours, BYOL, no labels"
SETTINGS = {
    "A": Setting("none", False, "none", 0.4877),
    "B": Setting("supervised", False, SUPERVISED, 0.5714),
    "C": Setting("byol", False, BYOL, 0.5960),
    "D": Setting("supervised", True, SUPERVISED, 0.2734),
    "E": Setting("byol", True, BYOL, 0.3719),
    "E0": Setting("none", True, "none (random initialisation)", None),  # the honest baseline for E
}
