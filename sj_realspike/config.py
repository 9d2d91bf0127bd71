"""Which neurons get which spike kind and amplitude granularity.

`SpikeConfig` follows torch.ao's ``QConfigMapping``: chained setters, and a fixed
precedence ``global < type < regex < name``. A rule maps to a `SpikeSpec` or to
``None``, which leaves the matching neurons untouched. Fields a spec leaves as
``None`` are inherited from the arguments of `convert_model`. One setting spans
neurons rather than matching them: `SpikeConfig.set_tie_summed` (neurons whose spikes
are added before a synapse share one amplitude).
"""

from __future__ import annotations

import math
import re
import re._parser as sre_parse
import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args

import torch.nn as nn

from .errors import ConfigError

__all__ = ["SpikeKind", "Granularity", "SpikeSpec", "SpikeConfig", "RuleSource", "shipped_recipes"]

SpikeKind = Literal["real", "ternary"]
Granularity = Literal["layer", "channel", "slice", "element"]
RuleSource = Literal["default", "global", "type", "regex", "name"]

_SPIKE_KINDS = get_args(SpikeKind)
_GRANULARITIES = get_args(Granularity)

# Name regexes come from recipes and bundle manifests, and Python's re has no timeout: a pattern
# that could backtrack exponentially (a repeat inside a repeat, ``(.*)*``) or is longer than any
# rule over module names needs is refused before it is compiled.
MAX_REGEX_CHARS = 1000
MAX_UNBOUNDED_REPEATS = 3
_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)


@dataclass(frozen=True)
class SpikeSpec:
    """What to do with one neuron: spike kind, amplitude granularity and initial amplitude.

    ``granularity="slice"`` splits the channels into ``slices`` equal consecutive groups
    with one amplitude each: q, k and v computed by one neuron of ``3·C`` channels
    (``slices=3``) then each get their own scalar, which folds through ``q @ kᵀ`` where
    per-channel amplitudes cannot. Any field left ``None`` is taken from `convert_model`'s
    arguments (``slices`` defaults to 3).
    """

    spike: SpikeKind | None = None
    granularity: Granularity | None = None
    init: float | None = None
    slices: int | None = None

    def __post_init__(self) -> None:
        if self.spike is not None and self.spike not in _SPIKE_KINDS:
            raise ConfigError(f"spike must be one of {_SPIKE_KINDS}, got {self.spike!r}")
        if self.granularity is not None and self.granularity not in _GRANULARITIES:
            raise ConfigError(
                f"granularity must be one of {_GRANULARITIES}, got {self.granularity!r}"
            )
        if self.init is not None and not isinstance(self.init, (int, float)):
            raise ConfigError(f"init must be a number, got {self.init!r}")
        if self.init is not None and not math.isfinite(self.init):
            raise ConfigError(f"init must be a finite number, got {self.init!r}")
        if self.slices is not None and (not isinstance(self.slices, int) or isinstance(self.slices, bool)
                                        or self.slices < 1):
            raise ConfigError(f"slices must be a positive integer, got {self.slices!r}")

    def filled(self, default: SpikeSpec) -> SpikeSpec:
        """This spec with its unset fields taken from ``default``."""
        return replace(
            self,
            **{f.name: getattr(default, f.name) for f in fields(self) if getattr(self, f.name) is None},
        )


Rule = Union[SpikeSpec, None]


def _type_name(t: type) -> str:
    return t.__name__


class SpikeConfig:
    """Per-neuron spike settings with precedence ``global < type < regex < name``.

    Example:
        >>> cfg = (SpikeConfig()
        ...        .set_global(SpikeSpec(granularity="channel"))
        ...        .set_type(neuron.LIFNode, SpikeSpec(spike="ternary"))
        ...        .set_name_regex(r"layer4\\.", SpikeSpec(granularity="element"))
        ...        .set_name("sn1", None))          # leave the stem neuron binary

    Types match by class, walking the MRO so a rule for ``LIFNode`` also covers its
    subclasses (the most derived rule wins); a type may also be given by its class
    name, as recipes do. Regexes match module names from the start (``re.match``);
    the first registered regex that matches wins. Names are fx module targets such
    as ``"layer1.0.sn1"``.
    """

    _UNSET = object()

    def __init__(self) -> None:
        self._global: Any = self._UNSET
        self._types: dict[str, Rule] = {}
        self._regexes: list[tuple[re.Pattern[str], Rule]] = []
        self._names: dict[str, Rule] = {}
        self._tie_summed: bool | None = None

    def set_tie_summed(self, tie: bool = True) -> SpikeConfig:
        """Give the neurons whose spikes are added before a synapse one shared amplitude.

        A SEW ``ADD`` residual stream is a sum of several neurons' spikes; with one
        amplitude ``a`` each, a conv reading it computes ``W(a₁⊙s₁ + a₂⊙s₂ + …)``, which
        fold can only split into one scaled copy of ``W`` per addend. Tied, the sum is
        ``a⊙(s₁ + s₂ + …)`` and fold scales the one conv, so the deploy model has
        exactly the convolutions of the network without amplitudes. Neurons whose
        amplitudes could not share one shape (or differ in spike kind, granularity or
        init) stay untied; the conversion report lists the groups either way.
        """
        if not isinstance(tie, bool):
            raise ConfigError(f"tie_summed must be true or false, got {tie!r}")
        self._tie_summed = tie
        return self

    @property
    def tie_summed(self) -> bool | None:
        """What `set_tie_summed` set (``None``: not set; `convert_model`'s argument decides)."""
        return self._tie_summed

    def set_global(self, spec: Rule) -> SpikeConfig:
        """Rule for every neuron no other rule matches (``None``: leave them all alone)."""
        self._global = self._check(spec)
        return self

    def set_type(self, neuron_type: type[nn.Module] | str, spec: Rule) -> SpikeConfig:
        """Rule for neurons of this class (or class name) and its subclasses."""
        key = neuron_type if isinstance(neuron_type, str) else _type_name(neuron_type)
        self._types[key] = self._check(spec)
        return self

    def set_name_regex(self, pattern: str, spec: Rule) -> SpikeConfig:
        """Rule for neurons whose module name matches ``pattern`` (``re.match``).

        Raises:
            ConfigError: ``pattern`` is not a string, is invalid, longer than
                `MAX_REGEX_CHARS`, or nests repetition (see `_compile_name_regex`).
        """
        self._regexes.append((_compile_name_regex(pattern), self._check(spec)))
        return self

    def set_name(self, name: str, spec: Rule) -> SpikeConfig:
        """Rule for the neuron with exactly this module name (the strongest rule)."""
        self._names[name] = self._check(spec)
        return self

    @staticmethod
    def _check(spec: Rule) -> Rule:
        if spec is not None and not isinstance(spec, SpikeSpec):
            raise ConfigError(f"a rule must be a SpikeSpec or None, got {type(spec).__name__}")
        return spec

    def resolve(self, name: str, module: nn.Module, default: SpikeSpec) -> tuple[SpikeSpec | None, RuleSource]:
        """The spec for one neuron (``None``: leave it alone) and which rule decided it."""
        if name in self._names:
            return self._fill(self._names[name], default), "name"
        for pattern, spec in self._regexes:
            if pattern.match(name):
                return self._fill(spec, default), "regex"
        for cls in type(module).__mro__:
            if cls.__name__ in self._types:
                return self._fill(self._types[cls.__name__], default), "type"
        if self._global is not self._UNSET:
            return self._fill(self._global, default), "global"
        return default, "default"

    @staticmethod
    def _fill(spec: Rule, default: SpikeSpec) -> SpikeSpec | None:
        return None if spec is None else spec.filled(default)

    # ------------------------------------------------------------------ TOML
    @classmethod
    def from_file(cls, path: str | Path) -> SpikeConfig:
        """Load a TOML recipe: a file path, or the name of a recipe shipped in ``converters/``.

        Format (every table optional; ``skip = true`` means ``None``)::

            [global]
            spike = "real"
            granularity = "channel"
            [types.LIFNode]
            spike = "ternary"
            [[regex]]
            pattern = "^layer4\\\\."
            granularity = "element"
            [names."sn1"]
            skip = true

        A top-level ``tie_summed = true`` calls `set_tie_summed`.

        Raises:
            ConfigError: unknown key, bad value (a non-finite ``init``, a name regex
                `set_name_regex` refuses), or a recipe that does not exist or is not a
                regular file.
        """
        p = Path(path)
        if p.exists() and not p.is_file():  # a FIFO or device would block or never end
            raise ConfigError(f"recipe {p} is not a regular file")
        if not p.is_file():
            shipped = shipped_recipes()
            stem = p.name.removesuffix(".toml")
            if p.parent == Path(".") and stem in shipped:
                p = shipped[stem]
            else:
                raise ConfigError(
                    f"recipe {str(path)!r} is neither a file nor a shipped recipe "
                    f"(shipped: {', '.join(sorted(shipped)) or 'none'})"
                )
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"recipe {p}: not valid TOML: {e}") from None
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> SpikeConfig:
        """Build a config from the parsed TOML structure documented in `from_file`."""
        unknown = set(data) - {"global", "types", "regex", "names", "description", "tie_summed"}
        if unknown:
            raise ConfigError(
                f"recipe {source}: unknown top-level key(s) {sorted(unknown)}; "
                "expected global, types, regex, names, tie_summed, description"
            )
        cfg = cls()
        if "tie_summed" in data:
            try:
                cfg.set_tie_summed(data["tie_summed"])
            except ConfigError as e:
                raise ConfigError(f"recipe {source}: {e}") from None
        if "global" in data:
            cfg.set_global(_rule_from_table(data["global"], f"{source} [global]"))
        for type_name, table in data.get("types", {}).items():
            cfg.set_type(type_name, _rule_from_table(table, f"{source} [types.{type_name}]"))
        for i, table in enumerate(data.get("regex", [])):
            where = f"{source} [[regex]] #{i + 1}"
            if not isinstance(table, dict) or "pattern" not in table:
                raise ConfigError(f"recipe {where}: each [[regex]] entry needs a 'pattern'")
            table = dict(table)
            pattern = table.pop("pattern")
            rule = _rule_from_table(table, where)
            try:
                cfg.set_name_regex(pattern, rule)
            except ConfigError as e:
                raise ConfigError(f"recipe {where}: {e}") from None
        for name, table in data.get("names", {}).items():
            cfg.set_name(name, _rule_from_table(table, f"{source} [names.{name}]"))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped structure that `from_dict` reads back (for bundles and reports)."""
        out: dict[str, Any] = {}
        if self._global is not self._UNSET:
            out["global"] = _rule_to_table(self._global)
        if self._types:
            out["types"] = {k: _rule_to_table(v) for k, v in self._types.items()}
        if self._regexes:
            out["regex"] = [{"pattern": p.pattern, **_rule_to_table(v)} for p, v in self._regexes]
        if self._names:
            out["names"] = {k: _rule_to_table(v) for k, v in self._names.items()}
        if self._tie_summed is not None:
            out["tie_summed"] = self._tie_summed
        return out

    def __repr__(self) -> str:
        return f"SpikeConfig({self.to_dict()!r})"


def _compile_name_regex(pattern: Any) -> re.Pattern[str]:
    """``pattern`` compiled, if matching it takes time polynomial in the name's length.

    A repeat whose body holds another repeat (``(.*)*``, ``(a+)+``) can try exponentially
    many ways to split a name that does not match, and ``re`` cannot be interrupted; such
    patterns are refused by their structure, as are over-long ones.
    """
    if not isinstance(pattern, str):
        raise ConfigError(f"a name regex must be a string, got {pattern!r}")
    if len(pattern) > MAX_REGEX_CHARS:
        raise ConfigError(f"name regex {pattern[:40]!r}... is {len(pattern):,} characters long, more than the "
                          f"{MAX_REGEX_CHARS:,} allowed")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise ConfigError(f"invalid name regex {pattern!r}: {e}") from None
    parsed = sre_parse.parse(pattern)
    if _nested_repeat(parsed):
        raise ConfigError(f"name regex {pattern!r} repeats a part that itself repeats or branches (like '(a+)*' or "
                          f"'(a|ab)*'): matching it can take exponential time; write it with one level of repetition")
    if (unbounded := _unbounded_repeats(parsed)) > MAX_UNBOUNDED_REPEATS:
        raise ConfigError(f"name regex {pattern!r} has {unbounded} unbounded repeats ('*', '+'), more than the "
                          f"{MAX_UNBOUNDED_REPEATS} allowed: each one multiplies the ways a name can be split")
    return compiled


def _nested_repeat(pattern: Any) -> bool:
    """Whether a parsed pattern has, inside a repeat that can match more than once, another such repeat
    or a branch (``(a|ab)*``: the branches can split a name in many ways at every step).

    Walked with a stack, not recursion: a pattern may nest hundreds of groups.
    """
    stack = [(pattern, False)]
    while stack:
        items, inside_repeat = stack.pop()
        for op, av in items:
            repeats = op in _REPEATS and av[1] > 1
            if inside_repeat and (repeats or op is sre_parse.BRANCH):
                return True
            stack.extend((sub, inside_repeat or repeats) for sub in _subpatterns(op, av))
    return False


def _unbounded_repeats(pattern: Any) -> int:
    """How many repeats without an upper bound a parsed pattern holds (``.*.*.*Z`` backtracks in ``n³``)."""
    count, stack = 0, [pattern]
    while stack:
        for op, av in stack.pop():
            count += op in _REPEATS and av[1] is sre_parse.MAXREPEAT
            stack.extend(_subpatterns(op, av))
    return count


def _subpatterns(op: Any, av: Any) -> list[Any]:
    """The parsed subpatterns inside one item of a parsed pattern (groups, branches, repeats, lookarounds)."""
    if op in _REPEATS:
        return [av[2]]
    if op is sre_parse.SUBPATTERN:
        return [av[3]]
    if op is sre_parse.BRANCH:
        return list(av[1])
    if op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
        return [av[1]]
    if op is sre_parse.GROUPREF_EXISTS:
        return [sub for sub in av[1:] if sub is not None]
    if op is sre_parse.ATOMIC_GROUP:
        return [av]
    return []


def _rule_from_table(table: Any, where: str) -> Rule:
    if not isinstance(table, dict):
        raise ConfigError(f"recipe {where}: expected a table, got {table!r}")
    unknown = set(table) - {"spike", "granularity", "init", "slices", "skip"}
    if unknown:
        raise ConfigError(
            f"recipe {where}: unknown key(s) {sorted(unknown)}; expected spike, granularity, init, slices, skip"
        )
    if table.get("skip", False):
        if len(table) > 1:
            raise ConfigError(f"recipe {where}: 'skip = true' cannot be combined with other keys")
        return None
    try:
        return SpikeSpec(spike=table.get("spike"), granularity=table.get("granularity"), init=table.get("init"),
                         slices=table.get("slices"))
    except ConfigError as e:
        raise ConfigError(f"recipe {where}: {e}") from None


def _rule_to_table(rule: Rule) -> dict[str, Any]:
    if rule is None:
        return {"skip": True}
    return {f.name: getattr(rule, f.name) for f in fields(rule) if getattr(rule, f.name) is not None}


def shipped_recipes() -> dict[str, Path]:
    """Recipes installed with the package, by name (file stem)."""
    root = resources.files("sj_realspike.converters")
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in root.iterdir()
        if entry.name.endswith(".toml")
    }
