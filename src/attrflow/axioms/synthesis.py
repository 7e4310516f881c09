"""Synthesise axiom-test inputs: optimise patch decoders until the model shows the scenario's property.

One *candidate* is one attempt at a sample: its own decoders (one per patch), its classes a and
b. Candidates are optimised in batches (grouped decoders, one model call per iteration for all
of them); each iteration draws a fresh background and fresh placements for every candidate.

Losses (Khakzar et al., 2022 Eq. 1–7 with the authors' weighting):

* warm-up (``warmup`` iterations): each patch maximises its class's logit on the background
  with only that patch, ``−5·Φ_t(X_{f})``;
* afterwards, per patch ``−10·w_gen·Φ_t(X_{f})`` plus, for each independence constraint the patch
  carries, ``5·w_ind·(Φ_c(X_with) − Φ_c(X_without))²``, where the *without* image is a constant
  (its logits detached) and in the *with* image only this patch carries gradients, because each
  minimisation of Eq. 2–7 runs over one patch only;
* the weights are focal terms (Guo et al., DTP) of running averages ("keys") of progress:
  ``w_gen = −(1−k)^γ log k`` with k the EMA of the patch's own-class softmax probability, and
  ``w_ind = −k^γ log(1−k)`` with k the EMA of the constraint's relative logit change; EMA
  factor α = 0.1 from 0.5 (Eq. 13, App. Sec. 6.3), γ = 0.8, updated after the warm-up.

Acceptance, checked every iteration after ``check_after`` on the values that iteration computed:
every patch's own-class probability on its single-patch image exceeds ``accuracy_threshold``
(0.94), and every constraint's relative logit change
``tanh(|Φ(with) − Φ(without)| / min(|Φ(with)|, |Φ(without)|))`` is below
``independence_threshold`` (0.14). The accepted sample is that iteration's background,
placement and patches, so its property holds exactly for what is stored. A candidate that is
not accepted within ``iterations`` is a failure: it is kept, flagged ``accepted = False``.
Candidates still running when enough samples are accepted are dropped (neither outcome).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attrflow.axioms.placement import box_masks, coalitions, compose, random_background, random_boxes
from attrflow.axioms.prior import PatchPriorBank
from attrflow.axioms.settings import SCENARIOS, Scenario

LOG = logging.getLogger("attrflow")
FOCAL_GAMMA = 0.8
KEY_MOMENTUM = 0.1  # α of Eq. 13
KEY_START = 0.5
WARMUP_WEIGHT = 5.0
GENERATING_WEIGHT = 10.0
INDEPENDENCE_WEIGHT = 5.0
EPS = 1e-12


@dataclass
class SynthesisResult:
    """Every finished candidate (accepted or failed), in the order they finished."""

    scenario: str
    backgrounds: np.ndarray  # (m, C, H, W) float32
    patches: np.ndarray  # (m, k, C, p, p) float32
    boxes: np.ndarray  # (m, k, 2) int64: (top, left) of each patch
    targets: np.ndarray  # (m, 2) int64: class a, class b
    accepted: np.ndarray  # (m,) bool
    iterations: np.ndarray  # (m,) int64: iterations run (the accepting one included)
    coalition_logits: np.ndarray  # (m, 2**k, 2): logits of a and b on every coalition (settings order)
    own_probability: np.ndarray  # (m, k): each patch's own-class probability on its single-patch image
    residuals: np.ndarray  # (m, constraints): tanh relative logit change, the acceptance measure
    relative_change: np.ndarray  # (m, constraints): |Φ(with) − Φ(without)| / min(|Φ(with)|, |Φ(without)|)
    seconds: np.ndarray  # (m,) wall seconds of the candidate's round up to its outcome, shared by the round
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> int:
        return int(self.patches.shape[-1])

    def inputs(self) -> np.ndarray:
        """The images to explain: every patch on its background."""
        return compose_stored(self.backgrounds, self.patches, self.boxes, tuple(range(self.patches.shape[1])))

    def masks(self) -> np.ndarray:
        size = self.backgrounds.shape[-1]
        return box_masks(torch.from_numpy(self.boxes), size, self.patch_size).numpy()


def compose_stored(backgrounds: np.ndarray, patches: np.ndarray, boxes: np.ndarray, coalition: tuple[int, ...]) -> np.ndarray:
    """A coalition's images from stored arrays (used to re-evaluate samples)."""
    with torch.no_grad():
        pieces = [torch.from_numpy(patches[:, i]) for i in range(patches.shape[1])]
        return compose(torch.from_numpy(backgrounds), pieces, torch.from_numpy(boxes), coalition).numpy()


def relative_change(with_value: torch.Tensor, without_value: torch.Tensor) -> torch.Tensor:
    return (with_value - without_value).abs() / torch.minimum(with_value.abs(), without_value.abs()).clamp_min(EPS)


def _focal_towards_one(key: torch.Tensor) -> torch.Tensor:
    key = key.clamp(EPS, 1 - 1e-7)
    return -((1 - key) ** FOCAL_GAMMA) * torch.log(key)


def _focal_towards_zero(key: torch.Tensor) -> torch.Tensor:
    key = key.clamp(0.0, 1 - 1e-7)
    return -(key**FOCAL_GAMMA) * torch.log1p(-key)


BACKGROUND_PROBES = 32  # backgrounds whose mean logits rank the classes


def rank_background_classes(model, channels: int, size: int, generator: torch.Generator) -> list[int]:
    """Every class, by its mean logit on reference backgrounds, highest first.

    The first is the background's own class: a patch "driving" it is accepted without carrying
    anything (the background alone already gives it), so automatic choices leave it out.
    """
    with torch.no_grad():
        logits = model(random_background(BACKGROUND_PROBES, channels, size, generator)).mean(0)
    return torch.argsort(logits, descending=True).tolist()


def choose_classes(n: int, ranked: list[int], fixed: list[int] | None, pool: int | None, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) classes a, b: the configured pair, or per candidate two different classes drawn from
    the ``pool`` classes ranked just below the background's own (all of them when ``pool`` is None).

    The seed draws both classes at random (an ImageNet model can be driven to most of its 1000
    classes). A small model may not be: on the embedded CNN a 32 px patch takes the three classes
    nearest the background (by logit) above 0.94 within ~60 steps, the other four never above 0.01
    in 200 — ``pool`` restricts the draw to the classes the background is nearest to.
    """
    dev = generator.device
    if fixed is not None:
        return torch.tensor([list(fixed)] * n, dtype=torch.long, device=dev)
    others = ranked[1:]
    if pool is not None:
        others = others[: int(pool)]
    if len(others) < 2:
        raise ValueError(f"axiom synthesis needs two classes besides the background's own (class {ranked[0]}), has {others}")
    order = torch.argsort(torch.rand((n, len(others)), generator=generator, device=dev), dim=1)[:, :2]
    return torch.tensor(others, dtype=torch.long, device=dev)[order]


@dataclass(frozen=True)
class _Entry:
    """One image per candidate in the batch: a coalition, and the patch whose gradients it carries."""

    coalition: tuple[int, ...]
    live: int | None


def _entries(scenario: Scenario) -> list[_Entry]:
    wanted = [_Entry((i,), i) for i in range(scenario.patches)]
    wanted += [_Entry(c.with_patches, c.patch) for c in scenario.constraints]
    present = {e.coalition for e in wanted}
    wanted += [_Entry(s, None) for s in coalitions(scenario.patches) if s not in present]
    return list(dict.fromkeys(wanted))


class _Round:
    """One batch of candidates optimised together."""

    def __init__(self, model, scenario: Scenario, setting: dict, targets: torch.Tensor, generator: torch.Generator):
        self.model, self.scenario, self.setting, self.gen = model, scenario, setting, generator
        self.targets = targets
        n, k = targets.shape[0], scenario.patches
        self.n = n
        channels = int(model.mean.shape[1])
        self.channels, self.size, self.patch = channels, int(setting["input_size"]), int(setting["patch_size"])
        self.bank = PatchPriorBank(n * k, self.patch, channels, int(setting["prior_width"]), generator)
        self.optimiser = torch.optim.RMSprop(self.bank.parameters(), lr=float(setting["lr"]))
        self.entries = _entries(scenario)
        self.value_entry = {s: next(i for i, e in enumerate(self.entries) if e.coalition == s) for s in coalitions(k)}
        dev = targets.device
        self.gen_key = torch.full((n, k), KEY_START, device=dev)
        self.ind_key = torch.full((n, len(scenario.constraints)), KEY_START, device=dev)

    def step(self, iteration: int, active: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward/backward/update; returns this iteration's state (before the update)."""
        sc, n, k = self.scenario, self.n, self.scenario.patches
        patches = self.bank().view(n, k, self.channels, self.patch, self.patch)
        background = random_background(n, self.channels, self.size, self.gen)
        boxes = random_boxes(n, k, self.size, self.patch, self.gen)
        live = [patches[:, i] for i in range(k)]
        frozen = [p.detach() for p in live]
        images = [
            compose(background, [live[i] if i == e.live else frozen[i] for i in range(k)], boxes, e.coalition)
            for e in self.entries
        ]
        logits = self.model(torch.cat(images)).view(len(self.entries), n, -1)
        pair = logits.gather(2, self.targets[None].expand(len(self.entries), n, 2))  # (E, n, 2) logits of a, b
        probs = torch.softmax(logits.detach(), dim=2).gather(2, self.targets[None].expand(len(self.entries), n, 2))

        own = torch.stack([pair[self.entries.index(_Entry((i,), i)), :, sc.patch_class[i]] for i in range(k)], 1)
        own_prob = torch.stack([probs[self.entries.index(_Entry((i,), i)), :, sc.patch_class[i]] for i in range(k)], 1)
        with_values, without_values = [], []
        for c in sc.constraints:
            with_values.append(pair[self.entries.index(_Entry(c.with_patches, c.patch)), :, c.cls])
            without_values.append(pair[self.value_entry[c.without_patches], :, c.cls].detach())
        if with_values:
            with_t, without_t = torch.stack(with_values, 1), torch.stack(without_values, 1)
            change = relative_change(with_t.detach(), without_t)
        else:
            with_t = without_t = change = torch.zeros(n, 0, device=logits.device)
        residual = torch.tanh(change)

        if iteration <= int(self.setting["warmup"]):
            per_candidate = -WARMUP_WEIGHT * own.sum(1)
        else:
            self.gen_key = KEY_MOMENTUM * own_prob + (1 - KEY_MOMENTUM) * self.gen_key
            self.ind_key = KEY_MOMENTUM * residual + (1 - KEY_MOMENTUM) * self.ind_key
            generating = -GENERATING_WEIGHT * (_focal_towards_one(self.gen_key) * own).sum(1)
            independence = INDEPENDENCE_WEIGHT * (_focal_towards_zero(self.ind_key) * (with_t - without_t) ** 2).sum(1)
            per_candidate = generating + independence
        self.optimiser.zero_grad(set_to_none=True)
        (per_candidate * active.to(per_candidate.dtype)).sum().backward()
        self.optimiser.step()

        values = torch.stack([pair[self.value_entry[s]].detach() for s in coalitions(k)], 1)  # (n, 2**k, 2)
        return {
            "patches": patches.detach(),
            "background": background,
            "boxes": boxes,
            "coalition_logits": values,
            "own_probability": own_prob,
            "residuals": residual,
            "relative_change": change,
        }


def synthesize(model, setting: dict, seed: int, *, max_batch: int = 256, progress: bool = False) -> SynthesisResult:
    """Run rounds of candidates until ``samples`` are accepted or ``max_candidates`` have finished."""
    scenario = SCENARIOS[setting["scenario"]]
    device = model.mean.device
    need, budget = int(setting["samples"]), int(setting["max_candidates"])
    per_round = max(1, min(int(setting["batch"]), max_batch // len(_entries(scenario))))
    accuracy, independence = float(setting["accuracy_threshold"]), float(setting["independence_threshold"])
    rows: list[dict[str, Any]] = []
    finished = accepted_count = dropped = rounds = 0
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    started = time.perf_counter()
    try:
        ranked = rank_background_classes(
            model, int(model.mean.shape[1]), int(setting["input_size"]), torch.Generator(device=device).manual_seed(int(seed))
        )
        if setting.get("classes") is not None and ranked[0] in setting["classes"]:
            LOG.warning("class %d is the background's own class: its patches need not carry anything", ranked[0])
        while accepted_count < need and finished < budget:
            n = min(per_round, budget - finished)
            gen = torch.Generator(device=device)
            gen.manual_seed((int(seed) + 1_000_003 * rounds) % 2**63)
            targets = choose_classes(n, ranked, setting.get("classes"), setting.get("class_pool"), gen)
            state = _Round(model, scenario, setting, targets, gen)
            round_start = time.perf_counter()
            active = torch.ones(n, dtype=torch.bool, device=device)
            iterations = int(setting["iterations"])
            for it in range(1, iterations + 1):
                out = state.step(it, active)
                ok = (out["own_probability"] > accuracy).all(1) & (out["residuals"] < independence).all(1)
                ok &= active & (it >= int(setting["check_after"]))
                outcome = ok | (active & (it == iterations))
                for i in torch.nonzero(outcome).flatten().tolist():
                    if ok[i] and accepted_count >= need:
                        dropped += 1
                        continue
                    accepted_count += int(ok[i])
                    finished += 1
                    rows.append(_row(out, targets, i, bool(ok[i]), it, time.perf_counter() - round_start))
                active &= ~outcome
                if not active.any() or accepted_count >= need:
                    dropped += int(active.sum())
                    break
                if progress and it % 50 == 0:
                    LOG.info("round %d iteration %d: %d accepted so far, %d running", rounds, it, accepted_count, int(active.sum()))
            rounds += 1
            LOG.info("round %d done: %d accepted, %d finished of budget %d", rounds, accepted_count, finished, budget)
    finally:
        model.train(was_training)
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
    return _result(scenario, rows, setting, {
        "candidates_finished": finished,
        "candidates_dropped": dropped,
        "rounds": rounds,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "background_class": ranked[0],
    })


def _row(out: dict[str, torch.Tensor], targets: torch.Tensor, i: int, accepted: bool, iteration: int, seconds: float) -> dict:
    return {
        "backgrounds": out["background"][i].cpu().numpy(),
        "patches": out["patches"][i].cpu().numpy(),
        "boxes": out["boxes"][i].cpu().numpy(),
        "targets": targets[i].cpu().numpy(),
        "accepted": accepted,
        "iterations": iteration,
        "coalition_logits": out["coalition_logits"][i].cpu().numpy(),
        "own_probability": out["own_probability"][i].cpu().numpy(),
        "residuals": out["residuals"][i].cpu().numpy(),
        "relative_change": out["relative_change"][i].cpu().numpy(),
        "seconds": seconds,
    }


def _result(scenario: Scenario, rows: list[dict], setting: dict, stats: dict) -> SynthesisResult:
    k, size, patch = scenario.patches, int(setting["input_size"]), int(setting["patch_size"])

    def stack(key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if not rows:
            return np.zeros((0, *shape), dtype=dtype)
        return np.stack([np.asarray(r[key]) for r in rows]).astype(dtype)

    channels = rows[0]["backgrounds"].shape[0] if rows else 3
    accepted = np.array([r["accepted"] for r in rows], dtype=bool)
    change = stack("relative_change", (len(scenario.constraints),), np.float64)
    stats = {
        **stats,
        "accepted": int(accepted.sum()),
        "failed": int((~accepted).sum()),
        "acceptance_rate": float(accepted.mean()) if len(accepted) else float("nan"),
        # The seed's "feasibility ratio": output change / output over the accepted samples
        # (Khakzar et al., 2022 Sec. 4.4 reports 0.0712 and 0.0649), averaged over each sample's constraints.
        "feasibility_ratio": float(change[accepted].mean()) if accepted.any() and change.shape[1] else float("nan"),
    }
    return SynthesisResult(
        scenario=scenario.name,
        backgrounds=stack("backgrounds", (channels, size, size), np.float32),
        patches=stack("patches", (k, channels, patch, patch), np.float32),
        boxes=stack("boxes", (k, 2), np.int64),
        targets=stack("targets", (2,), np.int64),
        accepted=accepted,
        iterations=np.array([r["iterations"] for r in rows], dtype=np.int64),
        coalition_logits=stack("coalition_logits", (2**k, 2), np.float32),
        own_probability=stack("own_probability", (k,), np.float32),
        residuals=stack("residuals", (len(scenario.constraints),), np.float32),
        relative_change=change,
        seconds=np.array([r["seconds"] for r in rows], dtype=np.float64),
        stats=stats,
    )
