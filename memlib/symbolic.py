"""Scalar estimates at interactive speed: trace an estimate once in its inputs, then evaluate (chapter 08).

Every byte count of a step is a product of tensor dimensions: a polynomial in the batch
size ``B`` and the sequence length ``S`` (``2·B·S·H`` for a hidden state,
``4·B·heads·S²`` for a score matrix), plus a few quantities that are not: a comparison
(``S >= sliding_window``, ``B == 1``), the larger of two moments, an integer division, a
float ratio (vLLM's concurrency).

For one model and one set of knobs (the *key*), :func:`evaluate` runs the estimate's own
code (its *build*) directly the first time; the second time it runs it with the varying
inputs (``B`` and ``S``, or vLLM's context length, batched tokens and sequences) as
:class:`Sym` values, which carry the call's numbers too.  Arithmetic collects polynomial
terms; a comparison, :func:`larger`, ``//``, ``%`` or a float operation becomes a
*derived* value, computed from the values before it (floats exactly as written).  Where
the code decides something from a value (``if``, ``max``, a check, the peak of a
timeline), the decision is taken with the call's numbers and recorded as a *guard*,
unless it holds for every input ``>= 1`` (a polynomial whose coefficients share a sign).
The result becomes a small Python function of the inputs that checks the guards and
rebuilds the same structure (dicts, lists, named tuples,
:class:`~memlib.breakdown.Breakdown`) with every number evaluated: exact Python integers,
identical to what the build computes for those inputs, at a fraction of the cost.  A call
whose numbers fail every compiled variant's guards is traced again (up to
:data:`MAX_VARIANTS` per key); beyond that, or for inputs below 1, numpy arrays or a key
that cannot be hashed, the build runs directly.

Anything the tracer cannot express (``int(sym)``, where ``memlib.validation.as_int`` keeps it traced, hashing it, a numpy call on it, a
formatted value cut out of its string) raises :class:`NotTraceable`, and the build runs
directly for that key.  The build stays the one definition of every formula; this
module only makes calling it again cheap.  Writing a build that compiles:
``notebooks/AUTHORING.md``.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

import numpy as np


class NotTraceable(TypeError):
    """An operation on a traced value that has no exact symbolic form."""


def _const(x):
    """An exact integer constant, or ``None`` if ``x`` is not one."""
    if type(x) is int:
        return x
    if isinstance(x, (bool, np.integer)):
        return int(x)
    return None


class _Trace:
    """The variables of one trace: ``B``, ``S``, the derived values and the guards, in order."""

    def __init__(self):
        self.base = 0                       # how many variables are inputs (the rest are derived)
        self.names: list[str] = []
        self.lines: list[str] = []          # derived values and guard checks, in the order made
        self.monomials: dict = {}           # a product of variables -> the name it is computed once as
        self.formatted: list = []           # (value, format spec) of each value formatted into a string
        self.by_code: dict = {}             # code of a derived value -> the value (made once)
        self.guards: set = set()            # the guards already checked

    def var(self, name: str, value: int, code: str | None = None) -> "Sym":
        self.names.append(name)
        if code is not None:
            self.lines.append(f"{name} = {code}")
        else:
            self.base += 1
        return Sym(self, {((len(self.names) - 1, 1),): 1}, value)

    def derived(self, code: str, value: int) -> "Sym":
        known = self.by_code.get(code)
        if known is None:
            known = self.by_code[code] = self.var(f"d{len(self.names)}", value, code)
        return known

    def guard(self, code: str, outcome: bool):
        if (code, outcome) not in self.guards:
            self.guards.add((code, outcome))
            self.lines.append(f"if {'not ' if outcome else ''}({code}): return _MISS")

    def monomial(self, m: tuple) -> str:
        """The name of the product ``m`` (``((var, power), ...)``), computed once per call."""
        factors = [self.names[v] for v, p in m for _ in range(p)]
        if len(factors) == 1:
            return factors[0]
        name = self.monomials.get(m)
        if name is None:
            name = self.monomials[m] = f"m{len(self.monomials)}"
            self.lines.append(f"{name} = {'*'.join(factors)}")
        return name


def _mono_mul(a: tuple, b: tuple) -> tuple:
    powers = dict(a)
    for v, p in b:
        powers[v] = powers.get(v, 0) + p
    return tuple(sorted(powers.items()))


class Sym:
    """An integer polynomial in the variables of one trace, with its value for the traced call."""

    __slots__ = ("trace", "terms", "value")
    __hash__ = None

    def __init__(self, trace: _Trace, terms: dict, value: int):
        self.trace = trace
        self.terms = {m: c for m, c in terms.items() if c}
        self.value = value

    def _lift(self, other) -> "Sym":
        if isinstance(other, Sym):
            if other.trace is not self.trace:
                raise NotTraceable("values of two traces mixed")
            return other
        c = _const(other)
        if c is None:
            raise NotTraceable(f"cannot trace an operation with {type(other).__name__}")
        return Sym(self.trace, {(): c}, c)

    # -- floats: every operation is kept as written (float arithmetic is not exact) -------------
    def _is_float(self, other=None) -> bool:
        return type(self.value) is float or type(other) is float or (
            isinstance(other, Sym) and type(other.value) is float)

    def _float_op(self, op: str, other, reverse: bool = False) -> "Sym":
        """``self op other`` (``other op self`` when ``reverse``) computed as written."""
        if isinstance(other, Sym):
            b, bv = other.code(), other.value
        elif type(other) is float and other == other and abs(other) != float("inf"):
            b, bv = repr(other), other
        else:
            o = self._lift(other)
            b, bv = o.code(), o.value
        a, av = self.code(), self.value
        if reverse:
            a, b, av, bv = b, a, bv, av
        return self.trace.derived(f"({a}) {op} ({b})", _OPS[op](av, bv))

    # -- the ring: +, -, * --------------------------------------------------------------
    def __add__(self, other):
        if self._is_float(other):
            return self._float_op("+", other)
        o = self._lift(other)
        terms = dict(self.terms)
        for m, c in o.terms.items():
            terms[m] = terms.get(m, 0) + c
        return Sym(self.trace, terms, self.value + o.value)

    def __radd__(self, other):
        if self._is_float(other):
            return self._float_op("+", other, reverse=True)
        return self + other

    def __neg__(self):
        if self._is_float():
            return self.trace.derived(f"-({self.code()})", -self.value)
        return Sym(self.trace, {m: -c for m, c in self.terms.items()}, -self.value)

    def __sub__(self, other):
        if self._is_float(other):
            return self._float_op("-", other)
        return self + (-self._lift(other))

    def __rsub__(self, other):
        if self._is_float(other):
            return self._float_op("-", other, reverse=True)
        return self._lift(other) + (-self)

    def __mul__(self, other):
        if self._is_float(other):
            return self._float_op("*", other)
        o = self._lift(other)
        terms: dict = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in o.terms.items():
                m = _mono_mul(m1, m2)
                terms[m] = terms.get(m, 0) + c1 * c2
        return Sym(self.trace, terms, self.value * o.value)

    def __rmul__(self, other):
        if self._is_float(other):
            return self._float_op("*", other, reverse=True)
        return self * other

    def __truediv__(self, other):
        return self._float_op("/", other)

    def __rtruediv__(self, other):
        return self._float_op("/", other, reverse=True)

    # -- what is not a polynomial: derived values ---------------------------------------------
    def _derive(self, template: str, op, other, reverse: bool = False):
        a, b = self, self._lift(other)
        if reverse:
            a, b = b, a
        return self.trace.derived(template.format(a.code(), b.code()), op(a.value, b.value))

    def __floordiv__(self, other):
        if self._is_float(other):
            return self._float_op("//", other)
        d = _const(other)
        if d and all(c % d == 0 for m, c in self.terms.items() if m):
            # (c0 + d·q) // d = q + c0 // d: exact for integers
            terms = {m: c // d for m, c in self.terms.items()}
            return Sym(self.trace, terms, self.value // d)
        return self._derive("({}) // ({})", lambda a, b: a // b, other)

    def __rfloordiv__(self, other):
        if self._is_float(other):
            return self._float_op("//", other, reverse=True)
        return self._derive("({}) // ({})", lambda a, b: a // b, other, reverse=True)

    def __mod__(self, other):
        d = _const(other)
        if not self._is_float(other) and d and all(c % d == 0 for m, c in self.terms.items() if m):
            return self.terms.get((), 0) % d           # (c0 + d·q) % d = c0 % d
        return self._derive("({}) % ({})", lambda a, b: a % b, other)

    def __rmod__(self, other):
        return self._derive("({}) % ({})", lambda a, b: a % b, other, reverse=True)

    def _compare(self, other, op: str, test):
        """``self op other``, as ``(self - other) op 0``: a plain bool where the sign of the
        difference is known for every input ``>= 1``, else a derived bool (floats are compared
        as they are: their difference is rounded)."""
        if self._is_float(other):
            return self._float_op(op, other)
        diff = self - self._lift(other)
        known = diff._decide(op)
        if known is not None:
            return known
        return self.trace.derived(f"({diff.code()}) {op} 0", test(diff.value, 0))

    def __ge__(self, other):
        return self._compare(other, ">=", lambda a, b: a >= b)

    def __gt__(self, other):
        return self._compare(other, ">", lambda a, b: a > b)

    def __le__(self, other):
        return self._compare(other, "<=", lambda a, b: a <= b)

    def __lt__(self, other):
        return self._compare(other, "<", lambda a, b: a < b)

    def __eq__(self, other):
        return self._compare(other, "==", lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, "!=", lambda a, b: a != b)

    def _bounds(self):
        """``(low, high)`` of the value over every input ``>= 1`` (``None``: no bound).  A
        polynomial in the inputs alone whose non-constant coefficients are all ``>= 0`` is
        smallest, and one whose are all ``<= 0`` largest, where every input is 1."""
        if any(v >= self.trace.base for m in self.terms for v, _ in m):      # a derived value: any
            return None, None
        others = [c for m, c in self.terms.items() if m]
        at_one = self.terms.get((), 0) + sum(others)
        return (at_one if all(c >= 0 for c in others) else None,
                at_one if all(c <= 0 for c in others) else None)

    def _decide(self, op: str):
        """``self op 0`` where it holds, or fails, for every input ``>= 1``; else ``None``."""
        lo, hi = self._bounds()
        pos, nonneg = lo is not None and lo > 0, lo is not None and lo >= 0
        neg, nonpos = hi is not None and hi < 0, hi is not None and hi <= 0
        if op == ">":
            return True if pos else False if nonpos else None
        if op == ">=":
            return True if nonneg else False if neg else None
        if op == "<":
            return True if neg else False if nonneg else None
        if op == "<=":
            return True if nonpos else False if pos else None
        zero = not self.terms
        if op == "==":
            return True if zero else False if (pos or neg) else None
        return False if zero else True if (pos or neg) else None          # "!="

    # -- a decision: taken with the traced call's value, kept as a guard -----------------------
    def __bool__(self):
        outcome = bool(self.value)
        if self._decide("!=") is None:           # else the same for every input >= 1: no guard
            self.trace.guard(self.code(), outcome)
        return outcome

    # -- formatted into a string: a placeholder, formatted again at every call ---------------------
    def __format__(self, spec: str) -> str:
        self.trace.formatted.append((self, spec))
        return f"{_OPEN}{len(self.trace.formatted) - 1}{_CLOSE}"

    def __str__(self):
        return self.__format__("")

    # -- what would lose the symbol: refused -----------------------------------------------------
    def _refuse(self, *args):
        raise NotTraceable("a traced value was used as a plain number (int(), a division)")

    __int__ = __index__ = __float__ = _refuse

    def as_int(self) -> "Sym":
        """``int(self)`` as a traced value (``int()`` itself must return a number):
        :func:`memlib.validation.as_int`."""
        return self if type(self.value) is int else self.trace.derived(f"int({self.code()})", int(self.value))

    def as_float(self) -> "Sym":
        """``float(self)`` as a traced value: :func:`memlib.validation.as_float`."""
        return self.trace.derived(f"float({self.code()})", float(self.value))
    __pow__ = __array__ = __abs__ = _refuse

    def __repr__(self):
        return f"Sym({self.code()} = {self.value})"

    # -- code ------------------------------------------------------------------------------
    def code(self) -> str:
        """Python source computing this value from the trace's variables."""
        if not self.terms:
            return "0"
        parts = []
        for m, c in sorted(self.terms.items()):
            if not m:
                parts.append(str(c))
            else:
                name = self.trace.monomial(m)
                parts.append(name if c == 1 else f"{c}*{name}")
        return " + ".join(parts).replace("+ -", "- ")


def larger(a, b):
    """``max(a, b)`` for ints, numpy arrays (element-wise) and traced values alike, without a
    guard: the larger one is computed at every call (chapter 08)."""
    if isinstance(a, Sym) or isinstance(b, Sym):
        s = a if isinstance(a, Sym) else b
        if s._is_float(a) or s._is_float(b):
            raise NotTraceable("larger() is for byte counts, not floats")
        a, b = s._lift(a), s._lift(b)
        if (a - b)._decide(">=") is True:        # the same one for every input >= 1
            return a
        if (a - b)._decide("<=") is True:
            return b
        return s.trace.derived(f"max({a.code()}, {b.code()})", max(a.value, b.value))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return max(a, b)


def memo(maxsize: int = 256):
    """``functools.lru_cache`` for a function that may also be called while an estimate is
    traced: a call with a traced (unhashable) argument runs the function itself."""
    def decorate(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def wrapper(*args):
            try:
                hash(args)
            except TypeError:
                return fn(*args)
            return cached(*args)
        wrapper.cache_info = cached.cache_info
        wrapper.cache_clear = cached.cache_clear
        return wrapper
    return decorate


# ------------------------------------------------------------------------------------------
# from a traced result to a function of (B, S)

_MISS = object()          # what a compiled function returns when a guard fails
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
        "//": lambda a, b: a // b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
_OPEN, _CLOSE = "\ue000", "\ue001"     # around a formatted value's number in a traced string (private use)
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


def _rebuild(cls, values: tuple):
    """A dataclass instance with these field values, without running ``__init__`` again
    (its checks ran when the result was traced)."""
    obj = object.__new__(cls)
    try:
        obj.__dict__.update(zip(_fields(cls), values))
    except AttributeError:                   # a class with __slots__
        for f, v in zip(_fields(cls), values):
            object.__setattr__(obj, f, v)
    return obj


_FIELDS: dict = {}


def _fields(cls) -> tuple:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


class _Emitter:
    def __init__(self, trace: _Trace, result, given: tuple = ()):
        self.trace = trace
        self.given = {id(k) for k in given}     # the key's objects: every call is given the same ones
        self.consts: dict = {}
        self.values: dict = {}           # code of a value -> the local it is computed once as
        self.refs: dict = {}             # id of a container -> how often the result refers to it
        self.built: dict = {}            # id of a container referred to more than once -> its local
        self._count(result)

    def _count(self, obj):
        if isinstance(obj, (dict, list, tuple)) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
            n = self.refs.get(id(obj), 0)
            self.refs[id(obj)] = n + 1
            if n:
                return
            if isinstance(obj, dict):
                for k, v in obj.items():
                    self._count(k)
                    self._count(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    self._count(v)
            else:
                for f in _fields(type(obj)):
                    self._count(getattr(obj, f))

    def value(self, v: Sym) -> str:
        """A traced value in the result: a sum of terms is computed once per call, however
        often it appears (the same bytes at many moments of a timeline)."""
        code = v.code()
        if len(v.terms) < 2:
            return f"({code})"
        name = self.values.get(code)
        if name is None:
            name = self.values[code] = f"v{len(self.values)}"
            self.trace.lines.append(f"{name} = {code}")
        return name

    def const(self, obj) -> str:
        for name, v in self.consts.items():
            if v is obj:
                return name
        name = f"_c{len(self.consts)}"
        self.consts[name] = obj
        return name

    def emit(self, obj) -> str:
        """Code that builds ``obj`` anew; an object the result refers to more than once is built
        once, as in the traced result (the same object at both places)."""
        name = self.built.get(id(obj))
        if name is not None:
            return name
        code = self._emit(obj)
        if self.refs.get(id(obj), 0) > 1:
            name = self.built[id(obj)] = f"o{len(self.built)}"
            self.trace.lines.append(f"{name} = {code}")
            return name
        return code

    def _emit(self, obj) -> str:
        if isinstance(obj, Sym):
            return self.value(obj)
        t = type(obj)
        if t is str and _OPEN in obj:
            return self.string(obj)
        if t in (int, str, bool, type(None)):
            return repr(obj)
        if t is float or t is frozenset:
            return self.const(obj)
        if t is dict:
            return "{" + ", ".join(f"{self.emit(k)}: {self.emit(v)}" for k, v in obj.items()) + "}"
        if t is list:
            return "[" + ", ".join(self.emit(v) for v in obj) + "]"
        if t is tuple:
            return "(" + "".join(f"{self.emit(v)}, " for v in obj) + ")"
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):     # a named tuple, built without its __new__
            return f"_new({self.const(t)}, (" + "".join(f"{self.emit(v)}, " for v in obj) + "))"
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            values = [getattr(obj, f) for f in _fields(t)]
            if id(obj) in self.given or _immutable(obj):
                return self.const(obj)                          # a ModelSpec, a Plan: shared as is
            return f"_rebuild({self.const(t)}, (" + "".join(f"{self.emit(v)}, " for v in values) + "))"
        raise NotTraceable(f"cannot rebuild a {t.__name__} in a compiled estimate")


    def string(self, text: str) -> str:
        """Code for a string with formatted values in it: its pieces, joined."""
        pieces, literals, at = [], [], 0
        for m in _PLACEHOLDER.finditer(text):
            value, spec = self.trace.formatted[int(m.group(1))]
            literals.append(text[at:m.start()])
            pieces += [repr(literals[-1]), f"format({value.code()}, {spec!r})"]
            at = m.end()
        literals.append(text[at:])
        pieces.append(repr(literals[-1]))
        if any(_OPEN in p or _CLOSE in p for p in literals):
            raise NotTraceable("a string with a formatted value was cut or changed")
        return "(" + " + ".join(p for p in pieces if p != "''") + ")"


def _immutable(obj) -> bool:
    """True for what every call may share: plain constants, and tuples and frozen dataclasses
    of them (a ModelSpec, a Plan); not a dict, a list, or anything holding a traced value."""
    if isinstance(obj, str):
        return _OPEN not in obj
    if type(obj) in (int, float, bool, type(None), frozenset):
        return True
    if isinstance(obj, tuple):
        return all(_immutable(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and type(obj).__dataclass_params__.frozen:
        return all(_immutable(getattr(obj, f)) for f in _fields(type(obj)))
    return False


def trace(build: Callable, values: tuple, *key) -> Callable:
    """``build(*values, *key)`` traced at ``values`` (positive Python ints, the call's varying
    inputs) and compiled into a function of those inputs: it returns the same structure with
    every number evaluated, or ``_MISS`` when new inputs fail a guard.  Raises
    :class:`NotTraceable`."""
    import inspect
    names = [p for p in inspect.signature(build).parameters][:len(values)]
    t = _Trace()
    result = build(*(t.var(n, v) for n, v in zip(names, values)), *key)
    em = _Emitter(t, result, key)
    body = em.emit(result)
    lines = [f"def _compiled({', '.join(names)}):", *(f"    {line}" for line in t.lines), f"    return {body}"]
    namespace = {"_new": tuple.__new__, "_rebuild": _rebuild, "_MISS": _MISS, **em.consts}
    source = "\n".join(lines)
    exec(compile(source, f"<memlib.symbolic {getattr(build, '__name__', 'build')}>", "exec"), namespace)
    fn = namespace["_compiled"]
    fn.source = source                       # what was compiled, for a reader who wants to see it
    return fn


#: ``(build, key) -> [compiled variants]``, or ``None`` for a key that cannot be traced.
_VARIANTS: dict = {}
MAX_VARIANTS = 16         # traces kept per key (beyond, a key whose decisions keep changing runs directly)
MAX_KEYS = 4096           # keys remembered (beyond, all are forgotten and traced again on reuse)
MAX_COMPILED = 1024       # compiled variants kept in all (about 17 kB each)
_compiled_count = 0


def evaluate(build: Callable, values: tuple, *key):
    """``build(*values, *key)``, where ``values`` are the inputs a reader varies (batch size and
    sequence length, say) and ``key`` the rest (hashable):
    through a compiled variant when every value is a Python int (traced at the second call
    with a key, again when a guard fails, up to :data:`MAX_VARIANTS` per key), else directly:
    a key's first call, numpy sweeps, unhashable knobs, a build that cannot be traced."""
    for v in values:
        if type(v) is not int or v < 1:     # the compiled forms assume positive inputs (their
            return build(*values, *key)     # checks are in the build: it raises for the others)
    try:
        variants = _VARIANTS.get((build, key), ())
    except TypeError:                        # an unhashable knob
        return build(*values, *key)
    if variants is None:
        return build(*values, *key)
    for i, fn in enumerate(variants):
        try:
            out = fn(*values)
        except ArithmeticError:              # e.g. a division a failed guard would have prevented
            continue
        if out is not _MISS:
            if i:                            # the last one used is tried first (a slider moves a little)
                variants.insert(0, variants.pop(i))
            return out
    if len(variants) >= MAX_VARIANTS:
        return build(*values, *key)
    if (build, key) not in _VARIANTS:        # a first call runs directly: a key met once (a planner's
        _remember(build, key, [])            # layouts) is not worth a trace; the second call traces
        return build(*values, *key)
    try:
        fn = trace(build, values, *key)
    except (TypeError, ValueError):          # NotTraceable, or a check that cannot take a traced value
        out = build(*values, *key)           # (an error of the inputs themselves is raised here)
        _remember(build, key, None)
        return out
    _remember(build, key, [*variants, fn])
    return fn(*values)


def _remember(build, key, variants):
    """Keep ``variants`` for ``(build, key)``; past :data:`MAX_KEYS` keys or
    :data:`MAX_COMPILED` compiled functions, everything else is forgotten first."""
    global _compiled_count
    if len(_VARIANTS) >= MAX_KEYS or _compiled_count >= MAX_COMPILED:
        _VARIANTS.clear()
        _compiled_count = len(variants or ())
    elif variants:
        _compiled_count += 1
    _VARIANTS[(build, key)] = variants


def compiled(build: Callable, values: tuple, *key) -> Callable | None:
    """The variant :func:`evaluate` uses for ``build(*values, *key)`` (tracing it if needed), or
    ``None`` when the key cannot be traced; for tests and benchmarks."""
    evaluate(build, values, *key)
    evaluate(build, values, *key)
    for fn in _VARIANTS.get((build, key)) or ():
        if fn(*values) is not _MISS:
            return fn
    return None
