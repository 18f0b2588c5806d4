"""Scalar estimates at interactive speed: trace an estimate once in ``B`` and ``S``, then evaluate (chapter 08).

Every byte count of a step is a product of tensor dimensions: a polynomial in the batch
size ``B`` and the sequence length ``S`` (``2·B·S·H`` for a hidden state,
``4·B·heads·S²`` for a score matrix), plus a few quantities that are not: a comparison
(``S >= sliding_window``, ``B == 1``), the larger of two moments, an integer division.
For one model and one set of knobs, :func:`compiled` runs an estimate's own code once
with ``B`` and ``S`` as :class:`Sym` values.  Arithmetic on them collects polynomial
terms; a comparison, ``larger`` or ``//`` becomes a *derived* value, computed from the
values before it.  The result is turned into a small Python function of ``(B, S)`` that
rebuilds the same structure (dicts, lists, named tuples) with every number evaluated:
exact Python integers, identical to what the estimate's code computes for those inputs,
at a fraction of the cost.

Anything the tracer cannot express (``bool(sym)``, ``int(sym)``, formatting it, a
numpy call) raises :class:`NotTraceable`; :func:`compiled` then returns ``None`` and the
caller runs the estimate's code directly.  The estimate's code stays the one definition
of every formula; this module only makes calling it again cheap.
"""
from __future__ import annotations

from functools import lru_cache
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
    """The variables of one trace: ``B``, ``S`` and the derived values, each with its code."""

    def __init__(self):
        self.defs: list[str] = []          # code of each variable, in order (B and S: arguments)
        self.names: list[str] = []

    def var(self, name: str, code: str | None = None) -> "Sym":
        i = len(self.names)
        self.names.append(name)
        self.defs.append(code)
        return Sym(self, {((i, 1),): 1})

    def derived(self, code: str) -> "Sym":
        return self.var(f"d{len(self.names)}", code)


def _mono_mul(a: tuple, b: tuple) -> tuple:
    powers = dict(a)
    for v, p in b:
        powers[v] = powers.get(v, 0) + p
    return tuple(sorted(powers.items()))


class Sym:
    """A polynomial with integer coefficients in the variables of one trace."""

    __slots__ = ("trace", "terms")
    __hash__ = None

    def __init__(self, trace: _Trace, terms: dict):
        self.trace = trace
        self.terms = {m: c for m, c in terms.items() if c}

    def _lift(self, other) -> "Sym":
        if isinstance(other, Sym):
            if other.trace is not self.trace:
                raise NotTraceable("values of two traces mixed")
            return other
        c = _const(other)
        if c is None:
            raise NotTraceable(f"cannot trace an operation with {type(other).__name__}")
        return Sym(self.trace, {(): c})

    # -- the ring: +, -, * --------------------------------------------------------------
    def __add__(self, other):
        o = self._lift(other)
        terms = dict(self.terms)
        for m, c in o.terms.items():
            terms[m] = terms.get(m, 0) + c
        return Sym(self.trace, terms)

    __radd__ = __add__

    def __neg__(self):
        return Sym(self.trace, {m: -c for m, c in self.terms.items()})

    def __sub__(self, other):
        return self + (-self._lift(other))

    def __rsub__(self, other):
        return self._lift(other) + (-self)

    def __mul__(self, other):
        o = self._lift(other)
        terms: dict = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in o.terms.items():
                m = _mono_mul(m1, m2)
                terms[m] = terms.get(m, 0) + c1 * c2
        return Sym(self.trace, terms)

    __rmul__ = __mul__

    # -- what is not a polynomial: derived values ---------------------------------------------
    def _derive(self, op: str, other, reverse: bool = False):
        a, b = self.code(), self._lift(other).code()
        if reverse:
            a, b = b, a
        return self.trace.derived(op.format(a, b))

    def __floordiv__(self, other):
        d = _const(other)
        if d and all(c % d == 0 for c in self.terms.values()):     # exact: divide the coefficients
            return Sym(self.trace, {m: c // d for m, c in self.terms.items()})
        return self._derive("({}) // ({})", other)

    def __rfloordiv__(self, other):
        return self._derive("({}) // ({})", other, reverse=True)

    def __ge__(self, other):
        return self._derive("int(({}) >= ({}))", other)

    def __gt__(self, other):
        return self._derive("int(({}) > ({}))", other)

    def __le__(self, other):
        return self._derive("int(({}) <= ({}))", other)

    def __lt__(self, other):
        return self._derive("int(({}) < ({}))", other)

    def __eq__(self, other):
        return self._derive("int(({}) == ({}))", other)

    def __ne__(self, other):
        return self._derive("int(({}) != ({}))", other)

    # -- what would lose the symbol: refused -----------------------------------------------------
    def _refuse(self, *args):
        raise NotTraceable("a traced value was used as a plain number (a branch, int(), a format)")

    __bool__ = __int__ = __index__ = __float__ = __format__ = __str__ = _refuse
    __truediv__ = __rtruediv__ = __pow__ = __mod__ = __array__ = _refuse

    def __repr__(self):
        return f"Sym({self.code()})"

    # -- code ------------------------------------------------------------------------------
    def code(self) -> str:
        """Python source computing this value from the trace's variables."""
        if not self.terms:
            return "0"
        parts = []
        for m, c in sorted(self.terms.items()):
            factors = [self.trace.names[v] for v, p in m for _ in range(p)]
            if c != 1 or not factors:
                factors.insert(0, str(c))
            parts.append("*".join(factors))
        return " + ".join(parts).replace("+ -", "- ")


def larger(a, b):
    """``max(a, b)`` for ints, numpy arrays (element-wise) and traced values alike (chapter 08)."""
    if isinstance(a, Sym) or isinstance(b, Sym):
        s = a if isinstance(a, Sym) else b
        return s.trace.derived(f"max({s._lift(a).code()}, {s._lift(b).code()})")
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return max(a, b)


# ------------------------------------------------------------------------------------------
# from a traced result to a function of (B, S)

_IMMUTABLE = (str, int, float, bool, type(None), frozenset)


class _Emitter:
    def __init__(self):
        self.consts: dict = {}

    def const(self, obj) -> str:
        name = f"_c{len(self.consts)}"
        self.consts[name] = obj
        return name

    def emit(self, obj) -> str:
        if isinstance(obj, Sym):
            return f"({obj.code()})"
        if type(obj) in (int, str, bool, type(None)):
            return repr(obj)
        if isinstance(obj, dict) and type(obj) is dict:
            return "{" + ", ".join(f"{self.emit(k)}: {self.emit(v)}" for k, v in obj.items()) + "}"
        if type(obj) is list:
            return "[" + ", ".join(self.emit(v) for v in obj) + "]"
        if type(obj) is tuple:
            return "(" + "".join(f"{self.emit(v)}, " for v in obj) + ")"
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):     # a named tuple, built without its __new__
            return f"_new({self.const(type(obj))}, (" + "".join(f"{self.emit(v)}, " for v in obj) + "))"
        if isinstance(obj, _IMMUTABLE) or _frozen_without_sym(obj):
            return self.const(obj)
        raise NotTraceable(f"cannot rebuild a {type(obj).__name__} in a compiled estimate")


def _frozen_without_sym(obj) -> bool:
    """A frozen dataclass (a ModelSpec, a Stage) is shared as is: it holds no traced value."""
    params = getattr(type(obj), "__dataclass_params__", None)
    if params is None or not params.frozen:
        return False
    return not any(isinstance(getattr(obj, f), Sym) for f in obj.__dataclass_fields__)


def trace(build: Callable, *key) -> Callable:
    """``build(B, S, *key)`` traced once and compiled into a function of ``(B, S)`` returning
    the same structure with every number evaluated.  Raises :class:`NotTraceable`."""
    t = _Trace()
    B, S = t.var("B"), t.var("S")
    result = build(B, S, *key)
    em = _Emitter()
    body = em.emit(result)
    lines = ["def _compiled(B, S):"]
    for name, code in zip(t.names[2:], t.defs[2:]):
        lines.append(f"    {name} = {code}")
    lines.append(f"    return {body}")
    namespace = {"_new": tuple.__new__, **em.consts}
    exec(compile("\n".join(lines), f"<memlib.symbolic {getattr(build, '__name__', 'build')}>", "exec"), namespace)
    return namespace["_compiled"]


@lru_cache(maxsize=2048)
def compiled(build: Callable, *key) -> Callable | None:
    """The compiled form of ``build(B, S, *key)`` (:func:`trace`), made once per ``key``;
    ``None`` when it cannot be traced (the caller then runs ``build`` with the numbers)."""
    try:
        return trace(build, *key)
    except NotTraceable:
        return None


def evaluate(build: Callable, B, S, *key):
    """``build(B, S, *key)``: through its compiled form for Python-int ``B`` and ``S``, else directly
    (numpy sweeps, or a build that cannot be traced).  ``key`` must be hashable."""
    if type(B) is int and type(S) is int:
        fn = compiled(build, *key)
        if fn is not None:
            return fn(B, S)
    return build(B, S, *key)
