"""A study: the paper's four claims and their rival on one model and one prompt source, as one resumable
pipeline.

Stages, each stored as it ends (so a killed study resumes at the first one missing):
1. modules: each pair's behaviour judged (pairs that do not flip dropped, the refusal tokens learned from
   the model's own answers), then exact resid/attn/mlp IE, and the IE along the pairs' own refusal
   direction, at every position and at `*` (`suffix` when the pairs are end-aligned), and every attention
   head at the last position and at `*`/`suffix`, all exactly: claims 0-2, and the heads.
2. neurons: every MLP neuron of every layer at the last position by attribution patching, each pair's top
   K sites verified by exact patching: the ranking the gate ablates. Its pairs are stage 1's, judged once.
3. gate: the gate curve of stage 2's top neurons, and of the refusal direction, on held-out pairs drawn
   from the same source, never the ones patched: claims 3 and 4.
4. report: the claims from stages 1 and 3 (db.report; computed when read).
Runs and gate checks stay what they are; the study ties them together (db.store's `studies` table).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from harmmed_tui.analysis.errors import SiteError
from harmmed_tui.analysis.gate import GateSpec
from harmmed_tui.analysis.spec import RunSpec

STAGES = ("modules", "neurons", "gate")
# stage 1's default positions: minimal pairs, every position and `*` (claim 0 reads where the harm enters);
# prompt sets (end-aligned, no shared words but the template's), the module level and the last positions:
# claims 1-4 in minutes; claim 0 needs minimal pairs
PAIR_POSITIONS, SET_POSITIONS = "all,*", "last:4,suffix"
CLAIM_0_NEEDS = "claim 0 needs minimal pairs patched at every position (--pairs FILE, --positions all,*)"


@dataclass(frozen=True)
class StudySpec:
    """What a study runs: the pairs' source, model and judge are `base`'s; the rest is the study's."""

    base: RunSpec
    held_out: int = 8  # held-out pairs for the gate curve, the next ones of the same source
    verify_top: int = 20  # each pair's top atp neurons checked by exact patching
    positions: str | None = None  # of resid/attn/mlp (default: PAIR_POSITIONS or SET_POSITIONS)
    gate: GateSpec = field(default_factory=lambda: GateSpec(seeds=3))

    def check(self) -> None:
        if self.base.max_pairs is None:
            raise SiteError("a study needs --max-pairs: the pairs after them are its held-out pairs")
        if self.held_out < 1:
            raise SiteError(f"--held-out must be at least 1, got {self.held_out}")
        self.gate.check()

    def modules_spec(self) -> RunSpec:
        """Exact: resid/attn/mlp and the direction, and every head at the last position and at once (heads
        are few, and attribution fails on saturated attention: AtP*, Kramar et al. 2024)."""
        end = self.base.align == "end"
        return self.base.replace(
            modules=("resid", "attn", "mlp", "direction", "head"),
            layers="all",
            positions=self.positions or (SET_POSITIONS if end else PAIR_POSITIONS),
            head_positions="last,suffix" if end else "last,*",
            method="exact",
            verify_top=0,
        )

    def neurons_spec(self) -> RunSpec:
        """Every neuron by atp at the last position, each pair's top K verified exactly."""
        return self.base.replace(
            modules=("neuron",),
            layers="all",
            positions="last",
            neuron_positions="last",
            method="atp",
            verify_top=self.verify_top,
        )

    def held_out_spec(self) -> RunSpec:
        """The source read up to the held-out pairs (the study takes those after its own)."""
        return self.base.replace(max_pairs=self.base.max_pairs + self.held_out)

    def to_json(self) -> str:
        return json.dumps(
            {
                "base": json.loads(self.base.to_json()),
                "held_out": self.held_out,
                "verify_top": self.verify_top,
                "positions": self.positions,
                "gate": dataclasses.asdict(self.gate),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> StudySpec:
        data = json.loads(text)
        gate = data["gate"]
        gate = GateSpec(**{**gate, "tops": tuple(gate["tops"]), "groups": tuple(gate["groups"])})
        return cls(
            RunSpec.from_json(json.dumps(data["base"])),
            data["held_out"],
            data["verify_top"],
            data["positions"],
            gate,
        )
