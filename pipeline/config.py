"""Reading and validating ``params.yaml``.

In: the path of a params file (``params.yaml`` at the project root by default).
Out: plain dicts per section, and typed, validated objects for the parts that
change a result (``VariantSpec``, ``TrainConfig``). Every problem becomes a
``UserError`` whose one-line message names the field and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline import paths


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


def load_params(path: Path | str = paths.PARAMS) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run from the project root or restore params.yaml") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: YAML syntax error at {where}: {problem}") from None
    if not isinstance(params, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise UserError(f"params.yaml: section '{name}' is missing or is not a mapping")
    return value


def _check(cond: bool, field: str, value: Any, rule: str) -> None:
    if not cond:
        raise UserError(f"params: '{field}' = {value!r} is invalid: {rule}")


def _as_bool(field: str, value: Any) -> bool:
    _check(isinstance(value, bool), field, value, "must be true or false")
    return value


def _as_rate(field: str, value: Any) -> float:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool), field, value, "must be a number")
    _check(0.0 <= float(value) < 1.0, field, value, "must be in [0, 1)")
    return float(value)


def _as_positive_int(field: str, value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    _check(ok, field, value, "must be a whole number")
    _check(value > 0, field, value, "must be > 0")
    return int(value)


def _as_positive_float(field: str, value: Any) -> float:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool), field, value, "must be a number")
    _check(float(value) > 0, field, value, "must be > 0")
    return float(value)


def _as_optional_limit(field: str, value: Any) -> int | None:
    return None if value is None else _as_positive_int(field, value)


@dataclass(frozen=True)
class VariantSpec:
    """Where a LeNet-5 variant puts batch norm and dropout.

    Dropout sits before batch norm where both are present, and both sit between
    a conv/dense layer and its tanh, as in the 2019 notebook.
    """

    name: str
    bn_input: bool = False
    bn_hidden: bool = False
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    conv_bias: bool = False

    @property
    def has_bn(self) -> bool:
        return self.bn_input or self.bn_hidden

    @property
    def has_dropout(self) -> bool:
        return self.dropout_input > 0 or self.dropout_hidden > 0

    def describe(self) -> str:
        parts = []
        if self.bn_input or self.bn_hidden:
            where = [w for w, on in (("input", self.bn_input), ("hidden", self.bn_hidden)) if on]
            parts.append("BN on " + " + ".join(where))
        if self.dropout_input or self.dropout_hidden:
            parts.append(f"dropout {self.dropout_input:g} input / {self.dropout_hidden:g} hidden")
        if not parts:
            parts.append("no BN, no dropout")
        parts.append("conv1-2 bias " + ("on" if self.conv_bias else "off"))
        return "; ".join(parts)


_SPEC_FIELDS = {f.name for f in dataclasses.fields(VariantSpec)} - {"name"}


def variant_names(params: dict[str, Any]) -> list[str]:
    return list(section(params, "variants"))


def variant_spec(params: dict[str, Any], name: str) -> VariantSpec:
    variants = section(params, "variants")
    if name not in variants:
        known = ", ".join(sorted(variants))
        raise UserError(f"unknown variant '{name}'; known variants: {known} (add one under 'variants' in params.yaml)")
    raw = variants[name] or {}
    if not isinstance(raw, dict):
        raise UserError(f"params: 'variants.{name}' must be a mapping of spec fields")
    unknown = set(raw) - _SPEC_FIELDS
    if unknown:
        raise UserError(
            f"params: 'variants.{name}' has unknown field(s) {sorted(unknown)}; allowed: {sorted(_SPEC_FIELDS)}"
        )
    f = f"variants.{name}."
    return VariantSpec(
        name=name,
        bn_input=_as_bool(f + "bn_input", raw.get("bn_input", False)),
        bn_hidden=_as_bool(f + "bn_hidden", raw.get("bn_hidden", False)),
        dropout_input=_as_rate(f + "dropout_input", raw.get("dropout_input", 0.0)),
        dropout_hidden=_as_rate(f + "dropout_hidden", raw.get("dropout_hidden", 0.0)),
        conv_bias=_as_bool(f + "conv_bias", raw.get("conv_bias", False)),
    )


@dataclass(frozen=True)
class TrainConfig:
    """The fixed (non-scientific) training settings; the notebook's by default."""

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.01
    momentum: float = 0.0
    shuffle: bool = True
    train_limit: int | None = None
    test_limit: int | None = None
    steps_per_execution: int = 1

    def flat(self) -> dict[str, Any]:
        return {f"train.{k}": v for k, v in dataclasses.asdict(self).items()}


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def train_config(params: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    raw = dict(section(params, "train"))
    unknown = set(raw) - _TRAIN_FIELDS
    if unknown:
        raise UserError(f"params: 'train' has unknown field(s) {sorted(unknown)}; allowed: {sorted(_TRAIN_FIELDS)}")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    missing = {"epochs", "batch_size", "learning_rate"} - set(raw)
    if missing:
        raise UserError(f"params: 'train' is missing {sorted(missing)}")
    return TrainConfig(
        epochs=_as_positive_int("train.epochs", raw["epochs"]),
        batch_size=_as_positive_int("train.batch_size", raw["batch_size"]),
        learning_rate=_as_positive_float("train.learning_rate", raw["learning_rate"]),
        momentum=_as_rate("train.momentum", raw.get("momentum", 0.0)),
        shuffle=_as_bool("train.shuffle", raw.get("shuffle", True)),
        train_limit=_as_optional_limit("train.train_limit", raw.get("train_limit")),
        test_limit=_as_optional_limit("train.test_limit", raw.get("test_limit")),
        steps_per_execution=_as_positive_int("train.steps_per_execution", raw.get("steps_per_execution", 1)),
    )


@dataclass(frozen=True)
class DiagnosticsConfig:
    """What the training stage measures besides loss and accuracy (see pipeline.diagnostics)."""

    enabled: bool = True  # the master switch: false turns every diagnostic off
    covariate_shift: bool = True
    coadaptation: bool = True
    variance_shift: bool = True
    probe_size: int = 256
    every_n_batches: int = 100
    variance_shift_images: int = 2000

    @property
    def any(self) -> bool:
        return self.enabled and (self.covariate_shift or self.coadaptation or self.variance_shift)


def diagnostics_config(params: dict[str, Any]) -> DiagnosticsConfig:
    """The ``diagnostics`` section; ``.any`` says whether anything is measured at all."""
    raw = params.get("diagnostics") or {}
    if not isinstance(raw, dict):
        raise UserError("params: 'diagnostics' must be a mapping")
    allowed = {f.name for f in dataclasses.fields(DiagnosticsConfig)}
    unknown = set(raw) - allowed
    if unknown:
        raise UserError(f"params: 'diagnostics' has unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    d = DiagnosticsConfig()
    return DiagnosticsConfig(
        enabled=_as_bool("diagnostics.enabled", raw.get("enabled", d.enabled)),
        covariate_shift=_as_bool("diagnostics.covariate_shift", raw.get("covariate_shift", d.covariate_shift)),
        coadaptation=_as_bool("diagnostics.coadaptation", raw.get("coadaptation", d.coadaptation)),
        variance_shift=_as_bool("diagnostics.variance_shift", raw.get("variance_shift", d.variance_shift)),
        probe_size=_as_positive_int("diagnostics.probe_size", raw.get("probe_size", d.probe_size)),
        every_n_batches=_as_positive_int("diagnostics.every_n_batches", raw.get("every_n_batches", d.every_n_batches)),
        variance_shift_images=_as_positive_int("diagnostics.variance_shift_images",
                                               raw.get("variance_shift_images", d.variance_shift_images)),
    )


def seeds(params: dict[str, Any]) -> list[int]:
    value = params.get("seeds")
    _check(isinstance(value, list) and len(value) > 0, "seeds", value, "must be a non-empty list of integers")
    for s in value:
        _check(isinstance(s, int) and not isinstance(s, bool) and s >= 0, "seeds", value, "must hold integers >= 0")
    _check(len(set(value)) == len(value), "seeds", value, "must not repeat a seed")
    return list(value)


# Signals received by run_main's handler. Python drops an exception raised while it runs a
# weakref callback or __del__ ("Exception ignored in ..."), so an interrupt can be lost;
# long loops (training: pipeline.train's SignalGuard) check this and raise it again.
pending_signals: list[int] = []


def _interrupt(signum, frame):
    pending_signals.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` and are noted in ``pending_signals``."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def raise_pending_signal() -> None:
    """Raise again an interrupt that was received but whose exception may have been lost."""
    if pending_signals:
        raise KeyboardInterrupt(f"signal {pending_signals[-1]} (raised again at the next batch)")


def run_main(fn: Callable[[], Any]) -> None:
    """Run a stage's main: a ``UserError`` exits 2 with its message on stderr, no traceback.

    SIGTERM is turned into ``KeyboardInterrupt`` so clean-up (temporary files, the
    MLflow run's status) happens for ``kill`` as it does for Ctrl-C; both are also noted
    in ``pending_signals`` in case the exception is swallowed.
    """
    install_signal_handlers()
    try:
        fn()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
