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
(0.94), and every independence constraint's change stays within ``independence_threshold``
under the configured ``tolerance``:

* ``effect`` (default): |Φ_c(with) − Φ_c(without)| / |Φ_o(X_{p}) − Φ_o(X_{})|, the constraint's
  change relative to the effect the constrained patch p has on its own class o. It does not move
  when a constant is added to every logit (softmax and gradients do not either), and for
  saturation it is the saturation index: 0 when each patch alone gives what both give, 1 for an
  additive pair;
* ``seed``: the authors' tanh(|Δ| / min(|Φ(with)|, |Φ(without)|)) below 0.14 — kept as an option.
  It depends on the logits' offset (a review of this code found 12 / 12 accepted samples become
  5 / 12 when 2 is added to every logit) and accepts an additive pair on large logits
  (tanh(1 / 11) < 0.14);
* ``absolute``: |Δ| in logits.

A draw that passes is then re-checked on ``robust_checks`` (K) fresh draws of background and
placement (no gradient): the candidate is accepted only when at least ``robust_fraction`` of the
K re-checks pass too, because the paper wants properties that do not depend on where the patch
is (a single lucky draw held on fresh placements in 0–12 % of cases). The accepted sample is the
passing iteration's background, placement and patches, with its pass fraction over the K
re-checks (``robust_pass_fraction``).

Classes: drawn at random as the authors do (``class_choice: random``), or by the model's
confusion (``class_choice: confusion``): a short pilot optimises warm-up patches for every class
of the pool and measures how far each class's patch moves the others' logits
(`scout_confusion`); the scenario's cross-class constraints then rank the (a, b) pairs
(`rank_pairs`), candidates are drawn from the ``class_pairs`` easiest, and each later round draws
each candidate's pair by Thompson sampling from the pairs' accepted / failed counts so far. On
the embedded CNN the pair decides most of the outcome (null feature: one pair accepted 6 of 6
candidates, another 0 of 10), which is what the seed's random draw over 1000 ImageNet classes
averages away and a small model cannot.

Only the candidates still running are evaluated each iteration (a round costs the sum of its
candidates' iterations, not its longest one); every candidate's background and placement are
still drawn, so what one candidate sees does not depend on when the others finished.

Every started candidate has one outcome: ``accepted``; ``failed`` (not accepted within
``iterations``, or given up after ``give_up_after`` iterations while a patch's running
own-class probability is still below ½); or ``unfinished`` (cut off by the ``max_minutes``
budget). A round always runs until each of its candidates has an outcome, even when enough samples
are accepted, so the acceptance rate of a set of candidates does not depend on when the run
stops; the stats count all three outcomes.
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
HOPELESS_PROBABILITY = 0.5  # give_up_after, and the pilot: a patch whose own-class probability is still below this


@dataclass
class SynthesisResult:
    """Every started candidate (accepted, failed or unfinished), in the order they finished."""

    scenario: str
    backgrounds: np.ndarray  # (m, C, H, W) float32
    patches: np.ndarray  # (m, k, C, p, p) float32
    boxes: np.ndarray  # (m, k, 2) int64: (top, left) of each patch
    targets: np.ndarray  # (m, 2) int64: class a, class b
    accepted: np.ndarray  # (m,) bool
    outcome: np.ndarray  # (m,) str: accepted | failed | unfinished
    iterations: np.ndarray  # (m,) int64: iterations run (the accepting one included)
    coalition_logits: np.ndarray  # (m, 2**k, 2): logits of a and b on every coalition (settings order)
    own_probability: np.ndarray  # (m, k): each patch's own-class probability on its single-patch image
    residuals: np.ndarray  # (m, constraints): tanh relative logit change, the acceptance measure
    relative_change: np.ndarray  # (m, constraints): |Φ(with) − Φ(without)| / min(|Φ(with)|, |Φ(without)|)
    effect_ratio: np.ndarray  # (m, constraints): |Φ(with) − Φ(without)| / the constrained patch's own effect
    robust_pass_fraction: np.ndarray  # (m,): share of the K fresh draws on which the property held (nan: never re-checked)
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


def constraint_measures(scenario: Scenario, values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every change measure of every constraint, from the logits of a and b on every coalition.

    ``values`` is (n, 2**k, 2) in `coalitions` order. Returns (n, constraints) tensors: ``seed``
    (the authors' tanh relative change), ``relative`` (its argument), ``effect`` (the change over
    the constrained patch's effect on its own class) and ``absolute`` (the change in logits).
    """
    order = coalitions(scenario.patches)
    n = values.shape[0]
    if not scenario.constraints:
        empty = values.new_zeros((n, 0))
        return {"seed": empty, "relative": empty, "effect": empty, "absolute": empty}
    empty_set = values[:, order.index(())]
    changes, relatives, effects = [], [], []
    for c in scenario.constraints:
        with_v, without_v = values[:, order.index(c.with_patches), c.cls], values[:, order.index(c.without_patches), c.cls]
        own = scenario.patch_class[c.patch]
        effect = (values[:, order.index((c.patch,)), own] - empty_set[:, own]).abs()
        change = (with_v - without_v).abs()
        changes.append(change)
        relatives.append(relative_change(with_v, without_v))
        effects.append(change / effect.clamp_min(EPS))
    change, relative = torch.stack(changes, 1), torch.stack(relatives, 1)
    return {"seed": torch.tanh(relative), "relative": relative, "effect": torch.stack(effects, 1), "absolute": change}


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


SCOUT_DECODERS = 2  # pilot patches per class
SCOUT_DRAWS = 4  # fresh backgrounds and placements each pilot patch is measured on
SCOUT_MIN_ITERATIONS = 20


def scout_confusion(model, setting: dict, classes: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """How far a patch made for each class moves every other class: the model's confusion, measured
    on patches rather than on data.

    For each class c of ``classes``, ``SCOUT_DECODERS`` pilot decoders are optimised as in the
    warm-up (``−Φ_c`` on the background with the patch alone) for ``warmup`` iterations (at least
    ``SCOUT_MIN_ITERATIONS``), then measured on ``SCOUT_DRAWS`` fresh backgrounds and placements.
    Returns ``confusion`` (m, m): ``confusion[i, j]`` = |mean Δ of class j's logit| / |mean Δ of class
    i's logit| when class i's patch is pasted (Δ: the image with the patch minus the background
    alone), the share of its own effect a patch for i carries over to j — what an independence
    constraint must bring below its threshold; and ``reached`` (m,): the pilot patches' mean
    own-class probability.
    """
    channels, size, patch = int(model.mean.shape[1]), int(setting["input_size"]), int(setting["patch_size"])
    m, dev = len(classes), generator.device
    n = m * SCOUT_DECODERS
    own = torch.tensor(classes, device=dev).repeat_interleave(SCOUT_DECODERS)
    bank = PatchPriorBank(n, patch, channels, int(setting["prior_width"]), generator)
    optimiser = torch.optim.RMSprop(bank.parameters(), lr=float(setting["lr"]))
    for _ in range(max(SCOUT_MIN_ITERATIONS, int(setting["warmup"]))):
        pieces = bank().view(n, 1, channels, patch, patch)
        image = compose(random_background(n, channels, size, generator), [pieces[:, 0]], random_boxes(n, 1, size, patch, generator), (0,))
        loss = -WARMUP_WEIGHT * self_logits(model(image), own).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        pieces = bank().repeat_interleave(SCOUT_DRAWS, 0).view(n * SCOUT_DRAWS, channels, patch, patch)
        background = random_background(n * SCOUT_DRAWS, channels, size, generator)
        boxes = random_boxes(n * SCOUT_DRAWS, 1, size, patch, generator)
        with_patch = model(compose(background, [pieces], boxes, (0,)))
        without = model(background)
        index = torch.tensor(classes, device=dev)
        delta = (with_patch - without)[:, index].view(m, -1, m).mean(1)  # (m, m): patch of class i, logit of class j
        probability = torch.softmax(with_patch, 1).gather(1, own.repeat_interleave(SCOUT_DRAWS)[:, None]).view(m, -1).mean(1)
    effect = delta.diagonal().abs().clamp_min(EPS)
    return delta.abs() / effect[:, None], probability


def self_logits(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, classes[:, None])[:, 0]


def rank_pairs(scenario: Scenario, classes: list[int], confusion: torch.Tensor, reached: torch.Tensor) -> list[tuple[float, int, int]]:
    """Every ordered pair (a, b) of ``classes``, easiest first: (cost, a, b).

    The cost adds, for each independence constraint of the scenario across classes (a patch of
    class o that must leave class c unchanged, o ≠ c), the pilot's ``confusion[o, c]``, and
    ``1 − reached`` of the least reached class a patch must drive. Constraints within one class
    (saturation) have no pilot measure: there the cost is only how far the class was reached.
    Pairs needing a class whose pilot patches stayed below p = ½ come after every other pair.
    """
    pairs, unreached = [], []
    for i, a in enumerate(classes):
        for j, b in enumerate(classes):
            if i == j:
                continue
            index = (i, j)
            cost = 0.0
            for c in scenario.constraints:
                own, other = index[scenario.patch_class[c.patch]], index[c.cls]
                if own != other:
                    cost += float(confusion[own, other])
            least = min(float(reached[index[k]]) for k in set(scenario.patch_class))
            (pairs if least >= HOPELESS_PROBABILITY else unreached).append((cost + 1.0 - least, a, b))
    return sorted(pairs) + sorted(unreached)


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

    def __init__(self, model, scenario: Scenario, setting: dict, targets: torch.Tensor, generator: torch.Generator,
                 check_generator: torch.Generator):
        self.model, self.scenario, self.setting, self.gen = model, scenario, setting, generator
        self.check_gen = check_generator
        self.targets = targets
        n, k = targets.shape[0], scenario.patches
        self.n = n
        channels = int(model.mean.shape[1])
        self.channels, self.size, self.patch = channels, int(setting["input_size"]), int(setting["patch_size"])
        self.bank = PatchPriorBank(n * k, self.patch, channels, int(setting["prior_width"]), generator)
        self.optimiser = torch.optim.RMSprop(self.bank.parameters(), lr=float(setting["lr"]))
        self.entries = _entries(scenario)
        self.value_entry = {s: next(i for i, e in enumerate(self.entries) if e.coalition == s) for s in coalitions(k)}
        self.tolerance = str(setting["tolerance"])
        dev = targets.device
        self.gen_key = torch.full((n, k), KEY_START, device=dev)
        self.ind_key = torch.full((n, len(scenario.constraints)), KEY_START, device=dev)

    def _own(self, tensor: torch.Tensor) -> torch.Tensor:
        """(n, k) values of each patch's own class on its single-patch image, from (E, n, 2) values."""
        sc = self.scenario
        return torch.stack([tensor[self.entries.index(_Entry((i,), i)), :, sc.patch_class[i]] for i in range(sc.patches)], 1)

    def step(self, iteration: int, active: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward/backward/update of the ``active`` candidates; returns this iteration's state
        (before the update) for every candidate, the finished ones' rows filled with nan.

        Every candidate's background and placement are drawn, finished or not, so the draws a
        candidate sees do not depend on when the others finished; only the active ones are
        evaluated (a finished candidate costs nothing more).
        """
        sc, n, k = self.scenario, self.n, self.scenario.patches
        patches = self.bank().view(n, k, self.channels, self.patch, self.patch)
        background = random_background(n, self.channels, self.size, self.gen)
        boxes = random_boxes(n, k, self.size, self.patch, self.gen)
        rows = torch.nonzero(active).flatten()
        m, targets = int(rows.numel()), self.targets[rows]
        live = [patches[rows, i] for i in range(k)]
        frozen = [p.detach() for p in live]
        images = [
            compose(background[rows], [live[i] if i == e.live else frozen[i] for i in range(k)], boxes[rows], e.coalition)
            for e in self.entries
        ]
        logits = self.model(torch.cat(images)).view(len(self.entries), m, -1)
        pair = logits.gather(2, targets[None].expand(len(self.entries), m, 2))  # (E, m, 2) logits of a, b
        probs = torch.softmax(logits.detach(), dim=2).gather(2, targets[None].expand(len(self.entries), m, 2))

        own = self._own(pair)
        own_prob = self._own(probs)
        values = torch.stack([pair[self.value_entry[s]].detach() for s in coalitions(k)], 1)  # (m, 2**k, 2)
        measures = constraint_measures(sc, values)
        measure = measures[self.tolerance]
        if sc.constraints:
            with_t = torch.stack([pair[self.entries.index(_Entry(c.with_patches, c.patch)), :, c.cls] for c in sc.constraints], 1)
            without_t = torch.stack([pair[self.value_entry[c.without_patches], :, c.cls].detach() for c in sc.constraints], 1)
        else:
            with_t = without_t = torch.zeros(m, 0, device=logits.device)

        if iteration <= int(self.setting["warmup"]):
            per_candidate = -WARMUP_WEIGHT * own.sum(1)
        else:
            progress = measure if self.tolerance == "seed" else torch.tanh(measure)
            self.gen_key[rows] = KEY_MOMENTUM * own_prob + (1 - KEY_MOMENTUM) * self.gen_key[rows]
            self.ind_key[rows] = KEY_MOMENTUM * progress + (1 - KEY_MOMENTUM) * self.ind_key[rows]
            generating = -GENERATING_WEIGHT * (_focal_towards_one(self.gen_key[rows]) * own).sum(1)
            independence = INDEPENDENCE_WEIGHT * (_focal_towards_zero(self.ind_key[rows]) * (with_t - without_t) ** 2).sum(1)
            per_candidate = generating + independence
        self.optimiser.zero_grad(set_to_none=True)
        per_candidate.sum().backward()
        self.optimiser.step()

        def full(part: torch.Tensor) -> torch.Tensor:
            whole = part.new_full((n, *part.shape[1:]), float("nan"))
            whole[rows] = part
            return whole

        return {
            "patches": patches.detach(),
            "background": background,
            "boxes": boxes,
            "coalition_logits": full(values),
            "own_probability": full(own_prob),
            "residuals": full(measures["seed"]),
            "relative_change": full(measures["relative"]),
            "effect_ratio": full(measures["effect"]),
            "measure": full(measure),
        }

    def passes(self, own_prob: torch.Tensor, measure: torch.Tensor) -> torch.Tensor:
        accuracy, independence = float(self.setting["accuracy_threshold"]), float(self.setting["independence_threshold"])
        return (own_prob > accuracy).all(1) & (measure < independence).all(1)

    @torch.no_grad()
    def recheck(self, patches: torch.Tensor, rows: torch.Tensor, draws: int) -> torch.Tensor:
        """Pass fraction of candidates ``rows`` (their ``patches`` as evaluated) over ``draws`` fresh
        backgrounds and placements (``check_generator``, so re-checks never perturb the optimisation)."""
        sc, k = self.scenario, self.scenario.patches
        m = int(rows.numel())
        chosen = patches[rows].repeat_interleave(draws, 0)  # (m·K, k, C, p, p)
        targets = self.targets[rows].repeat_interleave(draws, 0)
        background = random_background(m * draws, self.channels, self.size, self.check_gen)
        boxes = random_boxes(m * draws, k, self.size, self.patch, self.check_gen)
        pieces = [chosen[:, i] for i in range(k)]
        order = coalitions(k)
        logits = self.model(torch.cat([compose(background, pieces, boxes, s) for s in order])).view(len(order), m * draws, -1)
        pair = logits.gather(2, targets[None].expand(len(order), -1, 2))
        probs = torch.softmax(logits, dim=2).gather(2, targets[None].expand(len(order), -1, 2))
        own_prob = torch.stack([probs[order.index((i,)), :, sc.patch_class[i]] for i in range(k)], 1)
        measure = constraint_measures(sc, pair.permute(1, 0, 2))[self.tolerance]
        return self.passes(own_prob, measure).view(m, draws).float().mean(1)


def synthesize(model, setting: dict, seed: int, *, max_batch: int = 256, progress: bool = False) -> SynthesisResult:
    """Run rounds of candidates until ``samples`` are accepted, ``max_candidates`` have started or
    ``max_minutes`` have passed; every started candidate ends with an outcome (see the module)."""
    scenario = SCENARIOS[setting["scenario"]]
    device = model.mean.device
    need, budget = int(setting["samples"]), int(setting["max_candidates"])
    per_round = max(1, min(int(setting["batch"]), max_batch // len(_entries(scenario))))
    draws, fraction = int(setting["robust_checks"]), float(setting["robust_fraction"])
    give_up = setting.get("give_up_after")
    deadline = None if setting.get("max_minutes") is None else 60.0 * float(setting["max_minutes"])
    rows: list[dict[str, Any]] = []
    started_count = accepted_count = rounds = candidate_iterations = 0
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
        pairs: list[tuple[int, int]] | None = None
        if setting.get("classes") is None and setting.get("class_choice", "random") == "confusion":
            pool = ranked[1:] if setting.get("class_pool") is None else ranked[1 : 1 + int(setting["class_pool"])]
            scout_gen = torch.Generator(device=device).manual_seed((int(seed) + 104_729) % 2**63)
            confusion, reached = scout_confusion(model, setting, pool, scout_gen)
            ranking = rank_pairs(scenario, pool, confusion, reached)
            pairs = [(a, b) for _, a, b in ranking[: int(setting.get("class_pairs", 2))]]
            tally = {p: [0, 0] for p in pairs}  # accepted, finished
            LOG.info("classes by the model's confusion: %s (cost %s)", pairs,
                     [round(c, 3) for c, _, _ in ranking[: len(pairs)]])
        while accepted_count < need and started_count < budget:
            if deadline is not None and rounds and time.perf_counter() - started >= deadline:
                break
            n = min(per_round, budget - started_count)
            started_count += n
            gen = torch.Generator(device=device)
            gen.manual_seed((int(seed) + 1_000_003 * rounds) % 2**63)
            check_gen = torch.Generator(device=device)
            check_gen.manual_seed((int(seed) + 1_000_003 * rounds + 7_919) % 2**63)
            if pairs is None:
                targets = choose_classes(n, ranked, setting.get("classes"), setting.get("class_pool"), gen)
            else:
                # Thompson sampling: per candidate, the pair whose acceptance rate drawn from its
                # Beta(1 + accepted, 1 + failed) posterior is highest — uniform in the first round,
                # then mostly the pairs that got accepted, still sometimes the others
                draw = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen, device=device)))
                posterior = draw.beta([[tally[p][0] + 1 for p in pairs]] * n, [[tally[p][1] - tally[p][0] + 1 for p in pairs]] * n)
                targets = torch.tensor(pairs, dtype=torch.long, device=device)[torch.from_numpy(posterior.argmax(1)).to(device)]
            state = _Round(model, scenario, setting, targets, gen, check_gen)
            round_start = time.perf_counter()
            active = torch.ones(n, dtype=torch.bool, device=device)
            iterations = int(setting["iterations"])
            for it in range(1, iterations + 1):
                out = state.step(it, active)
                candidate_iterations += int(active.sum())
                ok = state.passes(out["own_probability"], out["measure"]) & active & (it >= int(setting["check_after"]))
                robustness = torch.full((n,), float("nan"), device=device)
                if ok.any() and draws > 0:
                    rows_ok = torch.nonzero(ok).flatten()
                    robustness[rows_ok] = state.recheck(out["patches"], rows_ok, draws)
                    ok &= torch.nan_to_num(robustness, nan=0.0) >= fraction - 1e-9
                failed = active & ~ok & (it == iterations)
                if give_up is not None and it == int(give_up):
                    failed |= active & ~ok & (state.gen_key.min(1).values < HOPELESS_PROBABILITY)
                for i in torch.nonzero(ok | failed).flatten().tolist():
                    outcome = "accepted" if ok[i] else "failed"
                    accepted_count += int(ok[i])
                    if pairs is not None:
                        counts = tally[tuple(targets[i].tolist())]
                        counts[0] += int(ok[i])
                        counts[1] += 1
                    rows.append(_row(out, targets, i, outcome, it, time.perf_counter() - round_start, float(robustness[i])))
                active &= ~(ok | failed)
                if not active.any():
                    break
                if deadline is not None and time.perf_counter() - started >= deadline:
                    for i in torch.nonzero(active).flatten().tolist():
                        rows.append(_row(out, targets, i, "unfinished", it, time.perf_counter() - round_start, float("nan")))
                    break
                if progress and it % 50 == 0:
                    LOG.info("round %d iteration %d: %d accepted so far, %d running", rounds, it, accepted_count, int(active.sum()))
            rounds += 1
            LOG.info("round %d done: %d accepted, %d started of budget %d", rounds, accepted_count, started_count, budget)
    finally:
        model.train(was_training)
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
    return _result(scenario, rows, setting, {
        "candidates_started": started_count,
        "candidate_iterations": candidate_iterations,
        "rounds": rounds,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "background_class": ranked[0],
        # class_choice confusion: the pairs drawn from, each with its accepted and finished counts
        "class_pairs": None if pairs is None else [[a, b, *tally[(a, b)]] for a, b in pairs],
    })


def _row(out: dict[str, torch.Tensor], targets: torch.Tensor, i: int, outcome: str, iteration: int, seconds: float,
         robustness: float) -> dict:
    return {
        "backgrounds": out["background"][i].cpu().numpy(),
        "patches": out["patches"][i].cpu().numpy(),
        "boxes": out["boxes"][i].cpu().numpy(),
        "targets": targets[i].cpu().numpy(),
        "outcome": outcome,
        "iterations": iteration,
        "coalition_logits": out["coalition_logits"][i].cpu().numpy(),
        "own_probability": out["own_probability"][i].cpu().numpy(),
        "residuals": out["residuals"][i].cpu().numpy(),
        "relative_change": out["relative_change"][i].cpu().numpy(),
        "effect_ratio": out["effect_ratio"][i].cpu().numpy(),
        "robust_pass_fraction": robustness,
        "seconds": seconds,
    }


def _result(scenario: Scenario, rows: list[dict], setting: dict, stats: dict) -> SynthesisResult:
    k, size, patch = scenario.patches, int(setting["input_size"]), int(setting["patch_size"])

    def stack(key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if not rows:
            return np.zeros((0, *shape), dtype=dtype)
        return np.stack([np.asarray(r[key]) for r in rows]).astype(dtype)

    channels = rows[0]["backgrounds"].shape[0] if rows else 3
    outcome = np.array([r["outcome"] for r in rows], dtype=str)
    accepted = outcome == "accepted"
    counts = {name: int((outcome == name).sum()) for name in ("accepted", "failed", "unfinished")}
    finished = counts["accepted"] + counts["failed"]
    change = stack("relative_change", (len(scenario.constraints),), np.float64)
    effect = stack("effect_ratio", (len(scenario.constraints),), np.float64)
    seconds = float(stats.get("wall_time_s", 0.0))
    stats = {
        **stats,
        **counts,
        # accepted / (accepted + failed): every candidate of a round runs to its outcome, so this
        # does not depend on when the run stopped; unfinished candidates (a max_minutes cut) are
        # counted apart, never as failures or successes.
        "acceptance_rate": counts["accepted"] / finished if finished else float("nan"),
        "iterations_per_accepted": stats["candidate_iterations"] / counts["accepted"] if counts["accepted"] else float("nan"),
        "seconds_per_accepted": seconds / counts["accepted"] if counts["accepted"] else float("nan"),
        # The authors' "feasibility ratio": output change / output over the accepted samples
        # (Khakzar et al., 2022, Sec. 4.4, report 0.0712 and 0.0649), averaged over each sample's constraints.
        "feasibility_ratio": float(change[accepted].mean()) if accepted.any() and change.shape[1] else float("nan"),
        "effect_ratio": float(effect[accepted].mean()) if accepted.any() and effect.shape[1] else float("nan"),
        "robust_pass_fraction": float(np.mean([r["robust_pass_fraction"] for r in rows if r["outcome"] == "accepted"]))
        if accepted.any() else float("nan"),
    }
    return SynthesisResult(
        scenario=scenario.name,
        backgrounds=stack("backgrounds", (channels, size, size), np.float32),
        patches=stack("patches", (k, channels, patch, patch), np.float32),
        boxes=stack("boxes", (k, 2), np.int64),
        targets=stack("targets", (2,), np.int64),
        accepted=accepted,
        outcome=outcome,
        iterations=np.array([r["iterations"] for r in rows], dtype=np.int64),
        coalition_logits=stack("coalition_logits", (2**k, 2), np.float32),
        own_probability=stack("own_probability", (k,), np.float32),
        residuals=stack("residuals", (len(scenario.constraints),), np.float32),
        relative_change=change,
        effect_ratio=effect,
        robust_pass_fraction=np.array([r["robust_pass_fraction"] for r in rows], dtype=np.float64),
        seconds=np.array([r["seconds"] for r in rows], dtype=np.float64),
        stats=stats,
    )
