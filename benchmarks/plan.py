"""What one benchmark run measures: the ``Plan`` made from the command line.

In: the parsed command line (``benchmarks.cli.parse_args``) and the variants in params.yaml.
Out: a checked ``Plan`` (repetitions, epochs, variants, candidates, quiet-machine settings,
quick-mode data limits); ``load_params`` gives params.yaml as a plain mapping, which the
benchmark writes modified copies of.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.candidates import Candidate
from benchmarks.quiet import QUIET_CORES
from pipeline.core import paths
from pipeline.core.errors import UserError

DEFAULT_VARIANTS = ("bn_hidden", "dropout")
QUICK_LIMITS = (512, 256)  # training and test images of a --quick run


def load_params(path: Path = paths.PARAMS) -> dict:
    """params.yaml as a plain mapping: the benchmark writes modified copies of it."""
    return yaml.safe_load(Path(path).read_text())


@dataclass
class Plan:
    quick: bool
    out_dir: Path
    reps: int
    epochs: int
    variants: list[str]
    candidates: list[Candidate]
    candidate_variants: list[str] = field(default_factory=list)
    seed: int = 0
    dvc: bool = True
    prepared: Path | None = None
    mirror: str | None = None
    keep_tmp: bool = False
    quiet_wait: float = 0.0       # seconds to wait, before each run, for the others' CPU to drop
    retries: int = 0              # re-runs of a run that others' CPU disturbed
    quiet_threshold: float = QUIET_CORES
    train_limit: int | None = None
    test_limit: int | None = None


def _check(args: argparse.Namespace, candidate_variants: list[str]) -> None:
    known = list(load_params().get("variants") or {})
    for variant in [*args.variants, *candidate_variants]:
        if variant not in known:
            raise UserError(f"--variants: unknown variant '{variant}'; known: {', '.join(known)}")
    if args.epochs < 2:
        raise UserError("--epochs must be >= 2: epoch 1 is the warm-up, the steady state is measured after it")
    if args.reps is not None and args.reps < 1:
        raise UserError("--reps must be >= 1")
    if not set(candidate_variants) <= set(args.variants):
        raise UserError("--candidate-variants must be among --variants (their bare runs are the reference)")


def make_plan(args: argparse.Namespace) -> Plan:
    """The checked plan; ``baseline`` joins the candidates whenever there are any."""
    candidate_variants = list(args.candidate_variants or args.variants)
    _check(args, candidate_variants)
    candidates = [Candidate.parse(text) for text in args.candidates]
    if candidates and not any(c.name == "baseline" for c in candidates):
        candidates.insert(0, Candidate())
    plan = Plan(quick=args.quick, out_dir=args.out_dir, reps=args.reps or (1 if args.quick else 3),
                epochs=args.epochs, variants=list(args.variants), candidates=candidates,
                candidate_variants=candidate_variants, dvc=not args.no_dvc, prepared=args.prepared,
                mirror=args.mirror, keep_tmp=args.keep_tmp, quiet_wait=max(0.0, args.quiet_wait),
                retries=max(0, args.retries))
    if args.quick:
        plan.train_limit, plan.test_limit = QUICK_LIMITS
    return plan
