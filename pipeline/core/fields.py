"""The rules of single fields in ``params.yaml``, as annotated types for ``pipeline.core.params``.

In: a raw value read from YAML.
Out: the clean value (``PositiveInt``, ``Rate`` …), or a pydantic error of type ``rule``
whose context holds the rule's wording (``must be > 0``); ``one_line(error)`` turns the first
problem of a validation into the one line ``pipeline.core.params`` raises, naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable

from pydantic import BeforeValidator, ValidationError
from pydantic_core import PydanticCustomError

def _rule(check: Callable[[Any], Any]) -> BeforeValidator:
    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise PydanticCustomError("rule", "{rule}", {"rule": str(exc)}) from None

    return BeforeValidator(validate)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _whole_positive(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("must be a whole number")
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _positive(value: Any) -> float:
    if not _is_number(value) or value <= 0:
        raise ValueError("must be a number > 0")
    return float(value)


def _non_negative(value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise ValueError("must be a number >= 0")
    return float(value)


def _rate(value: Any) -> float:
    if not _is_number(value):
        raise ValueError("must be a number")
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return float(value)


def _probability(value: Any) -> float:
    if not _is_number(value):
        raise ValueError("must be a number")
    if not 0.0 < value < 1.0:
        raise ValueError("must be in (0, 1)")
    return float(value)


def _optional_limit(value: Any) -> int | None:
    return None if value is None else _whole_positive(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty name")
    return value


def _pair(value: Any) -> tuple[str, str]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise ValueError("must be a pair of two variant names, e.g. [bn_hidden, plain]")
    return tuple(value)


def _sources(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ValueError("must be a list of URLs or folders")
    return value


def _pins(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("must map each file name to the SHA-256 of its payload")
    return {str(k): v for k, v in value.items()}


def _backend(value: Any) -> str:
    if value not in ("tensorflow", "jax"):
        raise ValueError("must be tensorflow or jax")
    return value


MAX_SEED = 2**32  # NumPy's legacy seeding (which Keras' set_random_seed uses) refuses larger seeds


def _seeds(value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of integers")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_SEED for s in value):
        raise ValueError(f"must hold integers from 0 to {MAX_SEED - 1} (NumPy's seed range)")
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a seed")
    return value


def _optional_seeds(value: Any) -> list[int]:
    if value is None or value == []:
        return []
    return _seeds(value)


def _learning_rates(value: Any) -> list[float | int]:
    if not isinstance(value, list):
        raise ValueError("must be a list of learning rates, e.g. [0.003, 0.01, 0.03, 0.1]; [] for no grid")
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in value):
        raise ValueError("must hold numbers > 0 (write 1e-3 as 0.001: YAML reads 1e-3 as text)")
    if len({float(r) for r in value}) != len(value):
        raise ValueError("must not repeat a learning rate")
    return value  # as written: DVC names the lr_grid stages and their folders after str(rate)


Bool = Annotated[bool, _rule(_bool)]
PositiveInt = Annotated[int, _rule(_whole_positive)]
PositiveFloat = Annotated[float, _rule(_positive)]
NonNegativeFloat = Annotated[float, _rule(_non_negative)]
Rate = Annotated[float, _rule(_rate)]
Probability = Annotated[float, _rule(_probability)]
Limit = Annotated[int | None, _rule(_optional_limit)]
Name = Annotated[str, _rule(_name)]
Pair = Annotated[tuple[str, str], _rule(_pair)]
Seeds = Annotated[list[int], _rule(_seeds)]
OptionalSeeds = Annotated[list[int], _rule(_optional_seeds)]
LearningRates = Annotated[list[float | int], _rule(_learning_rates)]
Backend = Annotated[str, _rule(_backend)]
Sources = Annotated[list[str], _rule(_sources)]
Pins = Annotated[dict[str, str], _rule(_pins)]


def one_line(exc: ValidationError) -> str:
    """The first problem pydantic found, worded the way a user fixes it."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    field = ".".join(loc)
    kind = first["type"]
    if kind == "missing":
        parent = loc[:-1]
        names = sorted(str(e["loc"][-1]) for e in errors
                       if e["type"] == "missing" and [str(p) for p in e["loc"][:-1]] == parent)
        if not parent:
            return f"params.yaml: section '{names[0]}' is missing or is not a mapping"
        section = ".".join(parent)
        return f"params: '{section}' is missing {names}; add " + ", ".join(f"'{section}.{n}'" for n in names)
    if kind == "model_type" and len(loc) == 1:
        return f"params.yaml: section '{field}' is missing or is not a mapping"
    if kind == "unknown_fields":
        return f"params: '{field}' {first['msg']}" if field else f"params.yaml {first['msg']}"
    if kind in ("variant_type", "no_variants", "fresh_seeds"):
        return f"params: {first['msg']}"
    if kind == "rule":
        return f"params: '{field}' = {first['input']!r} is invalid: {first['ctx']['rule']}"
    return f"params: '{field}' = {first['input']!r} is invalid: {first['msg'].lower()}"
