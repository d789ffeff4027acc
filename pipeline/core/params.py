"""``params.yaml`` read once and validated as a whole: the typed ``Params`` every stage receives.

In: the path of a params file (``params.yaml`` at the project root by default), or the
mapping already read from one.
Out: a frozen ``Params`` with one typed section per stage (``download``, ``normalize``,
``mlflow``, ``train``, ``seeds``, ``variants``, ``diagnostics``, ``convergence``, ``lr_grid``,
``compare``, ``confirm``). Every
problem becomes a ``UserError`` whose one line names the field and says what is allowed:
``params: 'train.epochs' = 0 is invalid: must be > 0``; unknown fields are listed with the
allowed names; a YAML syntax error carries its line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.fields import (Backend, Bool, LearningRates, Limit, Name, NonNegativeFloat, OptionalSeeds, Pair,
                                  Pins, PositiveFloat, PositiveInt, Probability, Rate, Seeds, Sources, one_line)

class Section(BaseModel):
    """A mapping in params.yaml: frozen, unknown keys refused with the allowed ones listed."""

    model_config = ConfigDict(frozen=True)
    internal_fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            allowed = sorted(set(cls.model_fields) - cls.internal_fields)
            if unknown:
                raise PydanticCustomError("unknown_fields", "has unknown field(s) {unknown}; allowed: {allowed}",
                                          {"unknown": unknown, "allowed": allowed})
        return data


# --- Sections --------------------------------------------------------------------------------


class DownloadSettings(Section):
    mirrors: Sources = []
    files: Pins


class NormalizeSettings(Section):
    scale: PositiveFloat


class MlflowSettings(Section):
    experiment: Name
    system_metrics_seconds: NonNegativeFloat = 10.0  # MLflow's system-metrics sampling interval; 0: off


class TrainSettings(Section):
    """The fixed (non-scientific) training settings; the notebook's by default."""

    epochs: PositiveInt
    batch_size: PositiveInt
    learning_rate: PositiveFloat
    momentum: Rate = 0.0
    shuffle: Bool = True
    train_limit: Limit = None
    test_limit: Limit = None
    steps_per_execution: PositiveInt = 1
    backend: Backend = "tensorflow"

    def flat(self) -> dict[str, Any]:
        return {f"train.{k}": v for k, v in self.model_dump().items()}


class VariantSpec(Section):
    """Where a LeNet-5 variant puts batch norm and dropout.

    Dropout sits before batch norm where both are present, and both sit between
    a conv/dense layer and its tanh, as in the 2019 notebook. ``dropout_output`` drops fc1's
    output (after its tanh, before the softmax layer): after every batch norm, Li et al.'s
    (2019) remedy for the variance shift.
    """

    internal_fields: ClassVar[frozenset[str]] = frozenset({"name"})

    name: str
    bn_input: Bool = False
    bn_hidden: Bool = False
    dropout_input: Rate = 0.0
    dropout_hidden: Rate = 0.0
    dropout_output: Rate = 0.0
    conv_bias: Bool = False

    @property
    def has_bn(self) -> bool:
        return self.bn_input or self.bn_hidden

    @property
    def has_dropout(self) -> bool:
        return self.dropout_input > 0 or self.dropout_hidden > 0 or self.dropout_output > 0

    def describe(self) -> str:
        parts = []
        if self.has_bn:
            where = [w for w, on in (("input", self.bn_input), ("hidden", self.bn_hidden)) if on]
            parts.append("BN on " + " + ".join(where))
        if self.dropout_input > 0 or self.dropout_hidden > 0:
            parts.append(f"dropout {self.dropout_input:g} input / {self.dropout_hidden:g} hidden")
        if self.dropout_output > 0:
            parts.append(f"dropout {self.dropout_output:g} after fc1 (after every BN)")
        if not parts:
            parts.append("no BN, no dropout")
        parts.append("conv1-2 bias " + ("on" if self.conv_bias else "off"))
        return "; ".join(parts)


class DiagnosticsSettings(Section):
    """What the training stage measures besides loss and accuracy (see pipeline.diagnostics)."""

    enabled: Bool = True  # the master switch: false turns every diagnostic off
    covariate_shift: Bool = True
    coadaptation: Bool = True
    variance_shift: Bool = True
    probe_size: PositiveInt = 256
    every_n_batches: PositiveInt = 100
    variance_shift_images: PositiveInt = 2000
    recalibration: Bool = True           # BN statistics re-estimated with dropout off, then tested again
    recalibration_images: PositiveInt = 10000

    @property
    def any(self) -> bool:
        return self.enabled and (self.covariate_shift or self.coadaptation or self.variance_shift
                                 or self.recalibration)


class ConvergenceSettings(Section):
    """Convergence speed (Ioffe & Szegedy 2015, Fig. 1a): accuracy on held-out images every
    ``every_steps`` optimizer steps, and the accuracies whose steps-to-reach the report tables."""

    enabled: Bool = True
    every_steps: PositiveInt = 100
    images: PositiveInt = 2000      # N test images drawn at random once (pipeline.train.convergence.held_out)
    targets: list[Probability] = [0.95, 0.97, 0.98]


class LrGridSettings(Section):
    """The learning-rate grid (off while ``learning_rates`` is empty): every variant and seed also
    trains at each rate on the training images minus ``validation_images`` of them, chosen by the
    seed; the report picks each variant's best rate on those validation images, never on the test set."""

    learning_rates: LearningRates = []
    seeds: Seeds = [0, 1, 2]  # the grid's own seeds (fewer than the study's: a cheaper grid)
    validation_images: PositiveInt = 5000
    epochs: PositiveInt | None = None  # each grid training's epochs; None: train.epochs


class ReferenceResult(Section):
    loss: PositiveFloat
    accuracy: Probability


class Conclusion(Section):
    """A claim of the notebook and what would make it true: in each ``[a, b]`` of ``holds_if``,
    variant ``a`` has the higher test accuracy."""

    claim: str
    holds_if: list[Pair]


class Interaction(Section):
    """A contrast of four variants, ``(plus[0] − minus[0]) − (minus[1] − plus[1])``: what one change adds
    with the other change present, minus what it adds without it (0 when the two do not interact)."""

    question: str
    plus: Pair
    minus: Pair

    def weights(self) -> dict[str, float]:
        return {self.plus[0]: 1.0, self.minus[0]: -1.0, self.minus[1]: -1.0, self.plus[1]: 1.0}

    def label(self) -> str:
        return f"({self.plus[0]} − {self.minus[0]}) − ({self.minus[1]} − {self.plus[1]})"


class CompareSettings(Section):
    alpha: Probability = 0.05
    confidence: Probability = 0.95
    # |difference| in test accuracy below this (a fraction: 0.001 = 0.1 pp) is "no meaningful difference"
    equivalence_margin: Probability = 0.001
    control: Name | None = None
    pairs: list[Pair] = []
    reference: dict[str, ReferenceResult] = {}
    conclusions: list[Conclusion] = []
    interactions: list[Interaction] = []


class ConfirmSettings(Section):
    """Confirmation at the tuned rates (off while ``seeds`` is empty): every variant trains again at the
    rate its ``choose`` stage picked from the grid, on the full training set, with these seeds (none of
    the study's, which the grid trained with), everything else as in the study."""

    seeds: OptionalSeeds = []


class Params(Section):
    download: DownloadSettings
    normalize: NormalizeSettings
    mlflow: MlflowSettings
    train: TrainSettings
    seeds: Seeds
    variants: dict[str, VariantSpec]
    diagnostics: DiagnosticsSettings = DiagnosticsSettings()
    convergence: ConvergenceSettings = ConvergenceSettings()
    lr_grid: LrGridSettings = LrGridSettings()
    compare: CompareSettings = CompareSettings()
    confirm: ConfirmSettings = ConfirmSettings()

    @model_validator(mode="before")
    @classmethod
    def _name_variants(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("variants"), dict):
            named = {}
            for name, spec in data["variants"].items():
                if spec is not None and not isinstance(spec, dict):
                    raise PydanticCustomError("variant_type", "'variants.{name}' must be a mapping of spec fields",
                                              {"name": name})
                named[name] = {**(spec or {}), "name": name}
            data = {**data, "variants": named}
        return data

    @model_validator(mode="after")
    def _at_least_one_variant(self) -> "Params":
        # compare.pairs/control may name variants that are not in the study (a shortened
        # variants list): the report compares the pairs whose variants were trained.
        if not self.variants:
            raise PydanticCustomError("no_variants", "'variants' must name at least one variant", {})
        if reused := sorted(set(self.confirm.seeds) & set(self.lr_grid.seeds)):
            raise PydanticCustomError("fresh_seeds", "'confirm.seeds' = {reused} reuses seeds of 'lr_grid.seeds' (the "
                                      "seeds that chose the rates); confirm on fresh seeds, e.g. [10, 11, 12]",
                                      {"reused": reused})
        return self

    # --- Reading ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Any, source: str = "params.yaml") -> "Params":
        """Validate a mapping read from a params file; any problem is one ``UserError`` line."""
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a mapping of sections at the top level")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise UserError(one_line(exc)) from None

    @classmethod
    def load(cls, path: Path | str = paths.PARAMS) -> "Params":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UserError(f"{path}: not found; run from the project root or restore params.yaml") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"{path}: YAML syntax error at {where}: {problem}") from None
        return cls.from_dict(raw, str(path))

    # --- Views -----------------------------------------------------------------------------

    def variant(self, name: str) -> VariantSpec:
        if name not in self.variants:
            known = ", ".join(sorted(self.variants))
            raise UserError(f"unknown variant '{name}'; known variants: {known} "
                            "(add one under 'variants' in params.yaml)")
        return self.variants[name]

    def with_train(self, overrides: dict[str, Any] | None) -> "Params":
        """These params with some ``train`` settings replaced (``None`` means keep), validated."""
        changed = {k: v for k, v in (overrides or {}).items() if v is not None}
        if not changed:
            return self
        raw = self.model_dump()
        raw["train"].update(changed)
        for spec in raw["variants"].values():
            spec.pop("name")
        return Params.from_dict(raw)
