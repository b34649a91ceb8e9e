"""The run plan: a recipe resolved once, with the task and the machine, into what stages read.

`resolve_plan` is the one function that derives a run's values from its
recipe: the architecture row, the special and word-start ids, the training
and evaluation masking (resolved to selectors, `mlm.data.masking`), the
segments of phases and batch warmup with their step ranges, the budget, the
length limit and the per-device batch. It raises every user error those
values can have. The pipeline, the loop, evaluation and export read the plan;
none of them re-derives or re-checks a value. The loop's strides come from
`RunPlan.strides`, and the measured step settings are added to the plan by
`with_settings` once the probe has run (`mlm.training.step_settings`).
"""

import dataclasses
import json
import math

from mlm.architectures import Architecture, architecture_of_backbone
from mlm.config import Recipe, parse_duration
from mlm.data.masking import Masking, resolve_masking
from mlm.data.pipeline import TokenIds
from mlm.errors import MlmError
from mlm.training.distributed import Topology
from mlm.training.schedule import Segment, segments
from mlm.training.step_settings import StepSettings

# The step bound of a run with `train.budget`: never reached, the budget ends it first.
BUDGET_STEPS = 10**9


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything a run decided before its first step; built by `resolve_plan` only."""

    recipe: Recipe
    # The architecture's row (`mlm.architectures`): keras-hub classes, inputs, family.
    arch: Architecture
    # The tokenizer's special ids, with word-start flags where a masking needs them.
    ids: TokenIds
    # Training masking and held-out masking (`masking.eval_*`), resolved to selectors.
    masking: Masking
    eval_masking: Masking
    # Steps cut into runs of one window length and batch size (`train.phases`,
    # `train.batch_warmup`); one segment without them. With a budget, phases are cut
    # by time as the run trains (`Segment.until`): their step ranges are bounds here.
    segments: tuple[Segment, ...]
    # The step bound: `train.steps`, or `BUDGET_STEPS` when `budget_seconds` ends the run.
    steps: int
    budget_seconds: float | None
    # The backbone's longest input (None: no limit, RoFormerV2's rotary positions).
    max_sequence_length: int | None
    # Windows each device takes of the first segment's global batch.
    per_device_batch: int
    # Precision and XLA of the train step; None until the probe has chosen.
    settings: StepSettings | None = None

    @property
    def train(self):
        """The recipe's `train` section, whose plain values (seed, intervals) the loop reads."""
        return self.recipe.train

    def strides(self, start_step: int) -> tuple[int, int]:
        """(epoch, steps per device call) from `start_step` (`strides`)."""
        return strides(self.recipe.train, steps=self.steps, start_step=start_step,
                       boundaries=[s.end for s in self.segments])

    def with_settings(self, settings: StepSettings) -> "RunPlan":
        """The plan with the train step's measured (or given) precision and XLA setting."""
        return dataclasses.replace(self, settings=settings)

    def to_dict(self) -> dict:
        """What `run_dir/plan.json` records: every derived value, no callables."""
        def masking(m: Masking) -> dict:
            return {"unit": m.unit, "selection_rate": m.selection_rate,
                    "final_selection_rate": m.final_selection_rate,
                    "mask_token_rate": m.mask_token_rate,
                    "random_token_rate": m.random_token_rate,
                    "slots": m.slots(self.recipe.model.sequence_length)}

        ids = dataclasses.asdict(self.ids)
        ids["word_starts"] = None if self.ids.word_starts is None else "from the vocabulary"
        return {
            "architecture": self.arch.name,
            "ids": ids,
            "masking": masking(self.masking),
            "eval_masking": masking(self.eval_masking),
            "segments": [_recorded(s) for s in self.segments],
            # A budget run's steps are found as it trains: none recorded (not the bound).
            "steps": None if self.steps >= BUDGET_STEPS else self.steps,
            "budget_seconds": self.budget_seconds,
            "max_sequence_length": self.max_sequence_length,
            "per_device_batch": self.per_device_batch,
            "step_settings": None if self.settings is None else self.settings.label(),
        }


def _recorded(segment: Segment) -> dict:
    """A segment as `plan.json` records it: a step that a budget run finds as it trains (a
    by-time segment's end, at `until` of the budget, and the next one's start) as null,
    not the step bound that stands in for it."""
    record = dataclasses.asdict(segment)
    for key in ("start", "end"):
        if record[key] >= BUDGET_STEPS:
            record[key] = None
    return record


def resolve_plan(recipe: Recipe, *, backbone, tokenizer,
                 topology: Topology | None = None) -> RunPlan:
    """The run plan of `recipe` for a task's keras-hub `backbone` and `tokenizer` on
    `topology` (default: one process, one device).

    Raises:
        MlmError: a batch that does not split over the devices or the
            gradient-accumulation parts, or a window longer than the backbone's
            maximum, in any segment.
    """
    topology = topology or Topology()
    cfg = recipe.train
    arch = architecture_of_backbone(backbone)
    limit = getattr(backbone, "max_sequence_length", None)  # None: RoFormerV2's rotary positions
    budget = parse_duration(cfg.budget) if cfg.budget else None
    steps = BUDGET_STEPS if budget else cfg.steps
    masking = resolve_masking(recipe.masking)
    eval_masking = resolve_masking(recipe.masking, evaluation=True)
    plan = _segments(recipe, steps=steps, topology=topology)
    check_sequence_length(recipe.model.sequence_length, limit=limit)
    for segment in plan:
        check_segment(segment, accumulation_steps=cfg.accumulation_steps, limit=limit,
                      topology=topology)
    family = arch.tokenizer_family if masking.needs_word_starts or \
        eval_masking.needs_word_starts else None
    return RunPlan(
        recipe=recipe, arch=arch, ids=TokenIds.from_tokenizer(tokenizer, family=family),
        masking=masking, eval_masking=eval_masking, segments=tuple(plan), steps=steps,
        budget_seconds=budget, max_sequence_length=limit,
        per_device_batch=plan[0].batch_size // topology.device_count,
    )


def check_batches(recipe: Recipe, *, topology: Topology) -> None:
    """Raises `MlmError` unless every segment's batch splits over the devices of
    `topology` and the accumulation parts: `resolve_plan`'s batch checks, made
    from the recipe alone before a run learns a vocabulary or tokenizes."""
    steps = BUDGET_STEPS if recipe.train.budget else recipe.train.steps
    for segment in _segments(recipe, steps=steps, topology=topology):
        check_segment(segment, accumulation_steps=recipe.train.accumulation_steps, limit=None,
                      topology=topology)


def _segments(recipe: Recipe, *, steps: int, topology: Topology) -> list[Segment]:
    cfg = recipe.train
    return segments(
        steps=steps, sequence_length=recipe.model.sequence_length,
        batch_size=cfg.batch_size, phases=cfg.phases, batch_warmup=cfg.batch_warmup,
        batch_multiple=math.lcm(cfg.accumulation_steps, topology.device_count),
        by_time=bool(cfg.budget),
    )


# What a resumed session must decide as the run's first session did (the segments, step
# bound and step settings may change: `--steps` extends a run, the probe may run again).
_KEPT_ON_RESUME = ("architecture", "ids", "masking", "eval_masking", "max_sequence_length")


def check_resumed(plan: RunPlan, recorded: dict) -> None:
    """Raises `MlmError` if `plan` decides what the run's recorded plan (`plan.json` of
    an earlier session) decided differently: its architecture, ids, masking or limits."""
    current = json.loads(json.dumps(plan.to_dict()))  # tuples as lists, as recorded
    changed = [key for key in _KEPT_ON_RESUME if key in recorded
               and recorded[key] != current[key]]
    if changed:
        raise MlmError(
            f"the run's plan changed since its first session ({', '.join(changed)} differ from "
            f"plan.json): its vocabulary, preset or recipe was edited; restore them or start a "
            f"new run."
        )


def strides(cfg, *, steps: int, start_step: int, boundaries=()) -> tuple[int, int]:
    """(epoch, steps per device call): the loop's two strides from `start_step`.

    An "epoch" of `keras.Model.fit` here is the greatest common divisor of the
    log, evaluation and checkpoint intervals (`cfg`, the recipe's train
    section), the last step, the start step and the ends of segments
    (`boundaries`), so every step that logs, evaluates, checkpoints or ends a
    segment ends an epoch. A device call runs the largest divisor of the epoch
    not above `train.steps_per_execution`, so no call crosses an epoch's end.
    """
    epoch = math.gcd(cfg.log_every, cfg.eval_every, cfg.checkpoint_every, steps, start_step,
                     *boundaries)
    per_call = max(d for d in range(1, min(epoch, cfg.steps_per_execution) + 1) if epoch % d == 0)
    return epoch, per_call


def check_sequence_length(length: int, *, limit: int | None) -> None:
    """Raises `MlmError` if windows of `length` tokens exceed the backbone's `limit`."""
    if limit is not None and length > limit:
        raise MlmError(
            f"model.sequence_length must be at most the backbone's max_sequence_length={limit}, "
            f"but received sequence_length={length}; lower it with --sequence-length."
        )


def check_segment(segment: Segment, *, accumulation_steps: int, limit: int | None,
                  topology: Topology) -> None:
    """Raises `MlmError` unless the segment's batch splits over the devices and the
    accumulation parts, and its windows fit the backbone."""
    topology.check_batch_size(segment.batch_size)
    if segment.batch_size % accumulation_steps:
        raise MlmError(
            f"a batch of {segment.batch_size} windows (train.phases) does not split into "
            f"train.accumulation_steps={accumulation_steps} parts; make each phase's "
            f"batch_size a multiple of it."
        )
    if limit is not None and segment.sequence_length > limit:
        raise MlmError(
            f"a phase of train.phases is longer than the backbone's max_sequence_length="
            f"{limit}: sequence_length={segment.sequence_length}; shorten the phase."
        )
