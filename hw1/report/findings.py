"""The homework's claims, checked on one run's numbers (the dict report/results.json holds).

Each claim compares two numbers of the run; it is shown when the first is above the second by at
least the claim's margin (issue 11's bars: a gain smaller than that is within a small run's noise).
A claim whose stages did not run has no line (never a placeholder).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    text: str
    ours: tuple[str, ...]      # where the number that should be higher sits in results.json
    versus: tuple[str, ...]    # the number it is compared with
    measure: str               # what the two numbers are, for the report
    margin: float = 0.0        # how much higher `ours` must be (0: strictly higher)
    sample_spread: float = 0.0  # how far ours − versus moved between two runs of the sample preset (README)
    fashion_spread: float = 0.0  # how far it moved over seeds 0–3 of the fashion preset (README), max − min

    def spread(self, preset: str | None) -> float | None:
        """The seed-to-seed spread measured on this preset, or None where none was measured."""
        return {"sample": self.sample_spread, "fashion": self.fashion_spread}.get(preset or "")


CLAIMS = (
    Claim("BYOL improves its kNN monitor over its random initialisation", ("byol", "knn_last"), ("byol", "knn_first"),
          "BYOL backbone's kNN accuracy (Office-Home train → val): last evaluation vs the initialisation "
          "(step 0)", 0.05, 0.047, 0.101),
    Claim("E beats E0", ("p1", "E", "val_acc"), ("p1", "E0", "val_acc"),
          "linear probe on a frozen backbone, val accuracy: BYOL backbone (E) vs random backbone (E0)", 0.10, 0.020,
          0.076),
    Claim("C beats A", ("p1", "C", "val_acc"), ("p1", "A", "val_acc"),
          "full fine-tuning, val accuracy: from the BYOL backbone (C) vs from random initialisation (A)", 0.03, 0.097,
          0.071),
    Claim("B beats A", ("p1", "B", "val_acc"), ("p1", "A", "val_acc"),
          "full fine-tuning, val accuracy: from the supervised backbone (B) vs from random initialisation (A)", 0.03,
          0.097, 0.039),
    Claim("model B beats model A in mIoU", ("p2", "deeplabv3", "miou"), ("p2", "fcn32s", "miou"),
          "validation mIoU: model B (DeepLabV3) vs model A (FCN32s)", 0.0, 0.130),
    Claim("t-SNE of the last epoch is more clustered than the first", ("tsne", "last", "silhouette"),
          ("tsne", "first", "silhouette"),
          "silhouette of the classes in the t-SNE map (setting C): last epoch vs first", 0.0, 0.044,
          0.081),  # seeds 0–2: seed 3's silhouettes were not reported
)


def _get(results: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results if isinstance(results, (int, float)) else None


def check(results: dict) -> list[dict]:
    """results.json's `findings`: one entry per claim whose two numbers the run has."""
    found = []
    for claim in CLAIMS:
        ours, versus = _get(results, claim.ours), _get(results, claim.versus)
        if ours is not None and versus is not None:
            shown = ours > versus and ours - versus >= claim.margin - 1e-9  # 1e-9: decimal margins, binary floats
            found.append({"claim": claim.text, "shown": shown, "ours": ours, "versus": versus})  # SPEC §8's shape
    return found


def markdown(findings: list[dict], preset: str | None = None) -> list[str]:
    """The report's Findings section (empty when no claim could be checked); for a preset whose spread over seeds
    was measured (sample, fashion), whether each difference is beyond it."""
    if not findings:
        return []
    claims = {c.text: c for c in CLAIMS}
    measured = preset in ("sample", "fashion")
    lines = ["## Findings\n",
             "The homework's claims, each checked on this run's own numbers (the tables below; `results.json` "
             "beside this report). A claim is shown when *ours* is above *versus* by at least its margin (a smaller "
             "gain is within a small run's noise); the difference says by how much. Claims whose stages did not "
             "run are left out.\n",
             *([f"On the {preset} preset, a difference inside the spread that its runs showed (other seeds, "
                "another machine: README, \"What the runs show\") is not settled either way.\n"]
               if measured else []),
             "| claim | this run | ours | versus | difference | margin | numbers compared |"
             + (" settled |" if measured else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if measured else "")]
    for f in findings:
        verdict = "**shown**" if f["shown"] else "**not shown**"
        claim = claims[f["claim"]]
        margin = f"≥ {claim.margin:+.2f}" if claim.margin else "> 0"
        diff = f["ours"] - f["versus"]
        spread = claim.spread(preset) or 0.0
        settled = ("yes" if abs(diff) > spread else f"no: inside ±{spread:.3f}") if measured else ""
        lines.append(f"| {f['claim']} | {verdict} | {f['ours']:.4f} | {f['versus']:.4f} | {diff:+.4f} | "
                     f"{margin} | {claim.measure} |" + (f" {settled} |" if measured else ""))
    return lines + [""]
