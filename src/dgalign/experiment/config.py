"""An experiment's YAML (`experiments/NAME.yaml`): what it runs, checked field by field before anything loads.

    name: quality                     # defaults to the file's stem
    description: one line for the report
    defaults: {n_prompts: 40, max_new_tokens: 32, seeds: [0, 1, 2], ...}   # RunSpec fields every run starts from
    suites: [hh-harmless, harmbench]  # one bench run per suite (id = the suite), with the defaults
    runs:                             # and/or runs spelled out: id, suite, any RunSpec field
      - {id: qwen-hh, suite: hh-harmless, model: qwen2.5-0.5b-instruct}
    train:
      dga: {n_prompts: 150}           # how DGA checkpoints are trained (TrainConfig defaults, `set` overrides)
      dpo: {pairs: hh-harmless:train, max_pairs: 200}
    judge: {model: smollm2-135m-instruct}   # the pairwise LM judge of the suites' `judge` dimensions
    frontier: {x: judge, y: harmless}       # runs that share a `group`: gold means drawn against each other

Method specs are `dgalign bench`'s (name[:key=value...]) with two additions: `dga` is DGA's default config
plus the checkpoint the experiment trains for the run's (model, suite, guide) — `dga:checkpoint=@SUITE`
names the one trained on another suite's training rows (out of distribution) — and `dpo` is plain sampling
from the model with the DPO adapter the experiment trains.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_MODEL
from ..errors import DGAlignError

# experiments/ beside src/ in a checkout: src/dgalign/experiment/config.py -> parents[3]
EXPERIMENTS_DIR = Path(__file__).resolve().parents[3] / "experiments"
DPO = "dpo"  # the method that is the DPO-tuned model, sampled plainly
KINDS = ("bench", "efficiency")  # efficiency: a bench run, then every method timed at each of `batches`


@dataclass
class RunSpec:
    """One bench run of an experiment: a suite, a model and the methods compared on it."""

    id: str  # its name in the report and its directory under the work dir
    suite: str  # a SUITES name
    kind: str = "bench"  # bench | efficiency
    model: str = DEFAULT_MODEL  # built-in name, HF id or local path
    methods: list[str] = field(default_factory=lambda: ["base"])  # bench specs, plus `dga` and `dpo` (module doc)
    reward: str = ""  # the guide; "" = the suite's
    gold: list[str] | None = None  # per-answer gold; None = the suite's
    n_prompts: int = 40  # the suite's first N evaluation rows
    max_new_tokens: int = 32
    seeds: list[int] = field(default_factory=lambda: [0])
    batch: int = 1  # bench: prompts per sampler call (its cost split over them; efficiency times batches apart)
    beta: float = 4.0
    budget_matched: float = 0.0  # > 0: each method's knob set to ≈ this × base's LM forward tokens
    ppl_model: str = "auto"  # the perplexity judge ("" = none)
    judge: bool = True  # the pairwise LM judge vs base on the suite's `judge` dimensions
    batches: list[int] = field(default_factory=lambda: [1, 8])  # efficiency: batch sizes timed
    repeats: int = 3  # efficiency: timed calls per (method, batch)
    group: str = ""  # frontier: runs of one group are drawn against each other
    weight: float | None = None  # frontier: the run's point on it (e.g. the weight of one objective)


@dataclass
class DGATrain:
    """How the experiment trains each DGA checkpoint (`dgalign train` on the suite's training rows)."""

    n_prompts: int = 150  # training rows, from the suite's first training row on
    tiny: bool = False  # TrainConfig.tiny() (tests, smoke runs)
    set: dict[str, str] = field(default_factory=dict)  # other TrainConfig fields


@dataclass
class DPOTrain:
    """How the experiment trains the DPO adapter (`dgalign train-dpo`)."""

    pairs: str = "hh-harmless:train"  # a pairs file or a suite's training split
    max_pairs: int = 200
    epochs: float = 1.0
    set: dict[str, str] = field(default_factory=dict)  # other DPOTrainConfig fields


@dataclass
class Judge:
    model: str = DEFAULT_MODEL  # the pairwise judge (rate/judge.py, MT-Bench prompt, both orders)


@dataclass
class Frontier:
    x: str  # gold reward spec on the x axis
    y: str  # and on the y axis


@dataclass
class Experiment:
    name: str
    path: Path  # the YAML it was read from
    description: str
    runs: list[RunSpec]
    dga: DGATrain
    dpo: DPOTrain
    judge: Judge
    frontier: Frontier | None
    text: str  # the YAML as written (recorded in the manifest)


TOP = ("name", "description", "defaults", "suites", "runs", "train", "judge", "frontier")


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def find_experiment(name: str) -> Path:
    """experiments/NAME.yaml, or NAME itself when it is a .yaml file."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if (EXPERIMENTS_DIR / f"{name}.yaml").is_file():
        return EXPERIMENTS_DIR / f"{name}.yaml"
    raise DGAlignError(f"unknown experiment {name!r}; valid: {', '.join(experiment_names()) or 'none'} "
                       f"({EXPERIMENTS_DIR}), or the path of a .yaml file")


def load_experiment(name: str) -> Experiment:
    """The experiment NAME (or a .yaml path) names, every field checked; one-line errors naming file and field."""
    import yaml

    path = find_experiment(name)
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DGAlignError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    where = str(path)
    doc = _mapping(where, doc, TOP)
    defaults = _mapping(f"{where}: defaults", doc.get("defaults", {}), _fields(RunSpec, skip=("id", "suite")))
    runs = [{"id": s, "suite": s} for s in _list(f"{where}: suites", doc.get("suites", []), str)]
    for i, run in enumerate(_list(f"{where}: runs", doc.get("runs", []), dict)):
        at = f"{where}: runs[{i}]"
        run = _mapping(at, run, _fields(RunSpec))
        missing = [k for k in ("id", "suite") if k not in run]
        if missing:
            raise DGAlignError(f"{at}: missing field {missing[0]!r} (a run needs id and suite)")
        runs.append(run)
    if not runs:
        raise DGAlignError(f"{where}: no runs; give suites: [...] and/or runs: [...]")
    specs = [_build(f"{where}: run {r['id']!r}", RunSpec, {**defaults, **r}) for r in runs]
    ids = [r.id for r in specs]
    for i in ids:
        if ids.count(i) > 1:
            raise DGAlignError(f"{where}: run id {i!r} appears twice")
    train = _mapping(f"{where}: train", doc.get("train", {}), ("dga", "dpo"))
    frontier = doc.get("frontier")
    exp = Experiment(
        name=_typed(where, "name", doc.get("name", path.stem), str), path=path,
        description=_typed(where, "description", doc.get("description", ""), str), runs=specs,
        dga=_build(f"{where}: train.dga", DGATrain, _mapping(f"{where}: train.dga", train.get("dga", {}),
                                                               _fields(DGATrain))),
        dpo=_build(f"{where}: train.dpo", DPOTrain, _mapping(f"{where}: train.dpo", train.get("dpo", {}),
                                                               _fields(DPOTrain))),
        judge=_build(f"{where}: judge", Judge, _mapping(f"{where}: judge", doc.get("judge", {}), _fields(Judge))),
        frontier=None if frontier is None else _build(f"{where}: frontier", Frontier,
                                                      _mapping(f"{where}: frontier", frontier, _fields(Frontier))),
        text=text,
    )
    for run in exp.runs:
        check_run(f"{where}: run {run.id!r}", run)
    return exp


def check_run(where: str, run: RunSpec) -> None:
    """What a run's fields must be, beyond their types: known suite, kind and methods, counts in range."""
    from ..bench import SUITES
    from ..samplers import SAMPLERS

    if run.suite not in SUITES:
        raise DGAlignError(f"{where}: unknown suite {run.suite!r}; valid: {', '.join(SUITES)}")
    if run.kind not in KINDS:
        raise DGAlignError(f"{where}: kind must be one of {', '.join(KINDS)}, got {run.kind!r}")
    heldout = SUITES[run.suite].heldout
    if not 1 <= run.n_prompts <= heldout:
        raise DGAlignError(f"{where}: n_prompts must be in 1..{heldout} ({run.suite}'s held-out evaluation rows), "
                           f"got {run.n_prompts}")
    for name, value in (("max_new_tokens", run.max_new_tokens), ("repeats", run.repeats)):
        if value < 1:
            raise DGAlignError(f"{where}: {name} must be at least 1, got {value}")
    if not run.seeds or len(set(run.seeds)) != len(run.seeds) or not all(s >= 0 for s in run.seeds):
        raise DGAlignError(f"{where}: seeds must be distinct non-negative integers, got {run.seeds}")
    if not isinstance(run.batch, int) or run.batch < 1:
        raise DGAlignError(f"{where}: batch must be a positive integer, got {run.batch!r}")
    if not run.batches or not all(b >= 1 for b in run.batches):
        raise DGAlignError(f"{where}: batches must be positive integers, got {run.batches}")
    if not run.methods:
        raise DGAlignError(f"{where}: no methods")
    for spec in run.methods:
        name = spec.split(":")[0].strip()
        if name != DPO and name not in SAMPLERS:
            raise DGAlignError(f"{where}: unknown method {name!r} in {spec!r}; valid: {', '.join([*SAMPLERS, DPO])}")
    if "base" not in run.methods:
        raise DGAlignError(f"{where}: methods must include base (win-rates and the judge compare against it)")


# -- checking YAML values against the dataclasses ---------------------------------------------------
def _fields(cls, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip and f.name != "path")


def _mapping(where: str, value, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise DGAlignError(f"{where}: expected a mapping of {', '.join(allowed)}, got {_kind(value)}")
    for key in value:
        if key not in allowed:
            raise DGAlignError(f"{where}: unknown field {key!r}; valid: {', '.join(allowed)}")
    return value


def _list(where: str, value, item: type) -> list:
    if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
        raise DGAlignError(f"{where}: expected a list of {_NAMES[item]}, got {_kind(value)}")
    return value


_NAMES = {str: "strings", int: "integers", float: "numbers", bool: "true/false", dict: "mappings"}


def _kind(value) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _typed(where: str, key: str, value, kind):
    """`value` checked against a field's annotation (str, int, float, bool, lists, dict[str, str], optionals)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _typed(where, key, value, kind)
    if origin is list:
        if not isinstance(value, list):
            raise DGAlignError(f"{where}: {key} must be a list of {_NAMES[args[0]]}, got {_kind(value)}")
        return [_typed(where, f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DGAlignError(f"{where}: {key} must be a mapping of key: value, got {_kind(value)}")
        return {str(k): str(v) for k, v in value.items()}
    ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise DGAlignError(f"{where}: {key} must be {_NAMES[kind][:-1] if kind is not bool else 'true or false'}, "
                           f"got {_kind(value)}")
    return float(value) if kind is float else value


def _build(where: str, cls, values: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{k: _typed(where, k, v, hints[k]) for k, v in values.items()})
