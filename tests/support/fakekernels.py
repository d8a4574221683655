"""CuPy's ElementwiseKernel and ReductionKernel for the fake CuPy: they run the kernel's own CUDA C source.

A kernel's operation is a few C statements; the subset npvit writes them in is also Python once a handful of
spellings are translated, so the fake evaluates the very text a GPU compiles, with NumPy arrays for the
parameters, instead of a second implementation that could disagree with it. What is translated:

* statements split at ``;``: ``name = expr``, ``name op= expr``, ``TYPE name = expr`` (a local, cast to TYPE);
* literals with C's types: ``0.5`` is a double (it promotes a float operand, as in C), ``0.5f`` a float,
  ``7ull`` an unsigned 64-bit integer, plain integers take the other operand's type;
* functional casts ``T(expr)``, ``float(expr)``, ``double(expr)``; functions ``exp``, ``exp2``, ``log``, ``tanh``,
  ``sqrt``, ``erf``, ``normcdf``, ``max``, ``min``, ``fabs``;
* ``/`` and ``%`` of two integers divide as C does (truncating); ``i`` is the element's index (signed: cast it,
  ``unsigned long long n = i;``, before mixing it with unsigned 64-bit values -- NumPy would make a float,
  and the fake refuses a float assigned to an integer),
  ``_ind.size()`` the element count, ``raw`` parameters are indexed by hand (``a[j]``).

Anything else -- C-style casts ``(T)x``, ``?:``, ``&&``, ``||``, ``!``, braces, loops -- raises
NotImplementedError, so a kernel cannot silently do something the fake did not check. A ReductionKernel maps
each element with ``map_expr``, combines pairs with ``reduce_expr`` (pairwise, in a tree: an order of
additions of its own, as a GPU's is), then applies ``post_map_expr`` with ``a`` the reduced value.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Callable

import numpy
import scipy.special

_C_TYPES = {"float": numpy.float32, "double": numpy.float64, "bool": numpy.bool_, "int": numpy.int32,
            "long long": numpy.int64, "unsigned int": numpy.uint32, "unsigned long long": numpy.uint64,
            "unsigned short": numpy.uint16, "ptrdiff_t": numpy.int64}
_PARAM_TYPES = {"float32": numpy.float32, "float64": numpy.float64, "bool": numpy.bool_, "int32": numpy.int32,
                "int64": numpy.int64, "uint16": numpy.uint16, "uint32": numpy.uint32, "uint64": numpy.uint64,
                "uint8": numpy.uint8}
_FORBIDDEN = (("?", "the ?: operator"), ("&&", "&&"), ("||", "||"), ("{", "braces"), ("for", "loops"),
              ("while", "loops"), ("if", "if"))


def _same_float(x: Any, fn: Callable) -> Any:
    """A math function keeping a float32 argument float32 (CUDA's float overloads), others float64."""
    a = numpy.asarray(x)
    dtype = a.dtype if a.dtype in (numpy.float32, numpy.float64) else numpy.float64
    return numpy.asarray(fn(a.astype(dtype, copy=False))).astype(dtype, copy=False)


def _cdiv(a: Any, b: Any) -> Any:
    if numpy.issubdtype(numpy.result_type(a, b), numpy.integer):
        q = numpy.floor_divide(a, b)
        fix = (q < 0) & (q * b != a)  # C truncates towards zero
        return q + fix if numpy.ndim(q) or fix else q
    return numpy.true_divide(a, b)


def _cmod(a: Any, b: Any) -> Any:
    if numpy.issubdtype(numpy.result_type(a, b), numpy.integer):
        return a - _cdiv(a, b) * b
    return numpy.fmod(a, b)


_FUNCTIONS = {
    "exp": lambda x: _same_float(x, numpy.exp), "log": lambda x: _same_float(x, numpy.log),
    "exp2": lambda x: _same_float(x, numpy.exp2),
    "tanh": lambda x: _same_float(x, numpy.tanh), "sqrt": lambda x: _same_float(x, numpy.sqrt),
    "erf": lambda x: _same_float(x, scipy.special.erf), "normcdf": lambda x: _same_float(x, scipy.special.ndtr),
    "fabs": lambda x: _same_float(x, numpy.abs), "max": numpy.maximum, "min": numpy.minimum,
    "_cdiv": _cdiv, "_cmod": _cmod,
}


class _Division(ast.NodeTransformer):
    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:  # noqa: N802 -- ast's name
        self.generic_visit(node)
        name = {ast.Div: "_cdiv", ast.Mod: "_cmod"}.get(type(node.op))
        if name is None:
            return node
        return ast.copy_location(ast.Call(ast.Name(name, ast.Load()), [node.left, node.right], []), node)


def _literal(match: re.Match) -> str:
    text = match.group(0)
    low = text.lower()
    if low.endswith("ull") or low.endswith("ul"):
        return f"_u64({text.rstrip('uUlL')})"
    if low.endswith("f") and not low.startswith("0x"):
        return f"_f32({text[:-1]})"
    if "." in text or ("e" in low and not low.startswith("0x")):
        return f"_f64({text})"
    return text


_NUMBER = re.compile(r"(?<![\w.])(0[xX][0-9a-fA-F]+[uUlL]*|\d+\.\d*(?:[eE][-+]?\d+)?[fF]?|\d+[eE][-+]?\d+[fF]?"
                     r"|\d+[uUlL]*)(?![\w.])")


def compile_expression(text: str) -> Any:
    """A C expression of the subset as compiled Python (see the module docstring)."""
    for token, what in _FORBIDDEN:
        if re.search(r"\b" + re.escape(token) + r"\b" if token.isalpha() else re.escape(token), text):
            raise NotImplementedError(f"fakecupy's kernels do not run {what}: {text!r}")
    if re.search(r"![^=]", text):
        raise NotImplementedError(f"fakecupy's kernels do not run the ! operator: {text!r}")
    if re.search(r"\(\s*(?:const\s+)?(?:[A-Z]\w*|float|double|int|bool|unsigned[\w ]*|long[\w ]*)\s*\)\s*[\w(]", text):
        raise NotImplementedError(f"fakecupy's kernels do not run C-style casts (write T(x)): {text!r}")
    text = text.replace("_ind.size()", "_ind_size").replace("_in_ind.size()", "_in_ind_size")
    text = text.replace("_out_ind.size()", "_out_ind_size")
    tree = _Division().visit(ast.parse(_NUMBER.sub(_literal, text.strip()), mode="eval"))
    return compile(ast.fix_missing_locations(tree), "<kernel>", "eval")


_STATEMENT = re.compile(r"^\s*(?:(?P<type>(?:const\s+)?[A-Za-z_][\w ]*?)\s+)?(?P<name>[A-Za-z_]\w*)\s*"
                        r"(?P<op>[-+*/|&^]?=)(?!=)\s*(?P<expr>.+?)\s*$", re.S)


def compile_statements(code: str) -> list[tuple[str | None, str, str, Any]]:
    """``code`` as (declared type or None, name, operator, compiled expression) per statement."""
    out = []
    for part in code.split(";"):
        if not part.strip():
            continue
        m = _STATEMENT.match(part)
        if m is None:
            raise NotImplementedError(f"fakecupy's kernels run assignments only: {part.strip()!r}")
        ctype = m.group("type")
        ctype = None if ctype is None else re.sub(r"^const\s+", "", ctype).strip()
        out.append((ctype, m.group("name"), m.group("op"), compile_expression(m.group("expr"))))
    return out


def parse_params(text: str) -> list[tuple[str, str, bool]]:
    """'T x, raw T y, uint64 k' -> [(type, name, raw), ...]."""
    params = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        raw = words[0] == "raw"
        words = words[1:] if raw else words
        params.append((" ".join(words[:-1]), words[-1], raw))
    return params


class _Types:
    """Type placeholders (T, U, ...) bound to dtypes by the arguments; fixed types by name."""

    def __init__(self) -> None:
        self.bound: dict[str, Any] = {}

    def dtype(self, name: str) -> Any:
        if name in _PARAM_TYPES:
            return numpy.dtype(_PARAM_TYPES[name])
        if name in _C_TYPES:
            return numpy.dtype(_C_TYPES[name])
        if name in self.bound:
            return self.bound[name]
        raise NotImplementedError(f"fakecupy: the type {name!r} is not bound by any argument")

    def bind(self, params: list[tuple[str, str, bool]], args: list[Any]) -> None:
        for (ptype, _, _), arg in zip(params, args):  # arrays first: they decide, scalars follow
            if isinstance(arg, numpy.ndarray) and ptype not in _PARAM_TYPES and ptype not in _C_TYPES:
                self.bound.setdefault(ptype, arg.dtype)
        for (ptype, _, _), arg in zip(params, args):
            if ptype not in _PARAM_TYPES and ptype not in _C_TYPES and arg is not None:
                self.bound.setdefault(ptype, numpy.asarray(arg).dtype)

    def namespace(self) -> dict[str, Any]:
        ns: dict[str, Any] = dict(_FUNCTIONS)
        ns.update(_f64=numpy.float64, _f32=numpy.float32, _u64=numpy.uint64)
        for cname, dtype in [*_C_TYPES.items(), *self.bound.items()]:
            if " " not in cname:
                ns[cname] = (lambda d: lambda v: numpy.asarray(v).astype(d))(numpy.dtype(dtype))
        return ns


def _run(statements: list, ns: dict[str, Any], types: _Types, outputs: dict[str, numpy.ndarray],
         params: frozenset[str] = frozenset()) -> None:
    local_types: dict[str, Any] = {}  # declared locals keep their C type on every later assignment
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for ctype, name, op, expr in statements:
            value = eval(expr, ns)  # noqa: S307 -- the kernel's own source, translated above
            if op != "=":
                value = eval(f"_l {op[0]} _r", {}, {"_l": ns[name], "_r": value}) if op[0] not in "/" else \
                    _cdiv(ns[name], value)
            if numpy.asarray(value).dtype.kind == "f" and (ctype is not None and types.dtype(ctype).kind in "iub"
                                                           or ctype is None and name in outputs
                                                           and outputs[name].dtype.kind in "iub"):
                raise NotImplementedError(f"fakecupy: a floating value assigned to the integer {name!r} (NumPy "
                                          "makes signed and unsigned 64-bit integers float: cast one first)")
            if ctype is None and name in local_types:
                ctype = local_types[name]
            elif ctype is not None:
                if name in local_types or name in outputs or name in params:
                    raise NotImplementedError(f"fakecupy: {name!r} declared twice (C++ refuses a local that "
                                              "redeclares a parameter or another local)")
                local_types[name] = ctype
            if ctype is not None:
                dtype = types.dtype(ctype)
                ns[name] = numpy.asarray(value).astype(dtype)
            elif name in outputs:
                target = outputs[name]
                target[...] = numpy.asarray(value).astype(target.dtype, copy=False)
                ns[name] = target
            else:
                raise NotImplementedError(f"fakecupy: {name!r} is assigned but is neither a local nor an output")


def elementwise(in_params: str, out_params: str, operation: str, args: tuple, kwargs: dict) -> Any:
    """Run an ElementwiseKernel's operation on NumPy arguments (see the module docstring)."""
    ins, outs = parse_params(in_params), parse_params(out_params)
    args = list(args)
    if len(args) not in (len(ins), len(ins) + len(outs)):
        raise TypeError(f"Wrong number of arguments for the kernel: {len(args)}")
    types = _Types()
    types.bind(ins + outs, args + [None] * (len(ins) + len(outs) - len(args)))
    arrays = [numpy.asarray(a) for (_, _, raw), a in zip(ins, args) if not raw]
    shape = numpy.broadcast_shapes(*(a.shape for a in arrays), *(numpy.shape(a) for a in args[len(ins):]))
    ns = types.namespace()
    for (ptype, name, raw), arg in zip(ins, args):
        dtype = types.dtype(ptype)
        value = numpy.asarray(arg)
        ns[name] = value.reshape(-1) if raw else numpy.broadcast_to(value.astype(dtype, copy=False), shape)
    outputs = {}
    for j, (ptype, name, _) in enumerate(outs):
        given = args[len(ins) + j] if len(args) > len(ins) else None
        if given is None:
            given = numpy.empty(shape, dtype=types.dtype(ptype))
        elif given.shape != shape:
            raise ValueError(f"Out shape is mismatched: {given.shape} for {shape}")
        outputs[name] = given
        ns[name] = given
    size = int(numpy.prod(shape))
    ns["i"] = numpy.arange(size, dtype=numpy.int64).reshape(shape)
    ns["_ind_size"] = size
    _run(compile_statements(operation), ns, types, outputs, frozenset(name for _, name, _ in ins))
    result = [outputs[name] for _, name, _ in outs]
    return result[0] if len(result) == 1 else tuple(result)


def reduction(kernel: Any, args: tuple, axis: Any, keepdims: bool, out: Any) -> numpy.ndarray:
    """Run a ReductionKernel: map every element, reduce pairwise along ``axis``, post-map."""
    ins, outs = parse_params(kernel.in_params), parse_params(kernel.out_params)
    if len(outs) != 1 or len(args) != len(ins):
        raise TypeError("fakecupy's ReductionKernel takes its inputs and one output")
    types = _Types()
    types.bind(ins, list(args))
    shape = numpy.broadcast_shapes(*(numpy.shape(a) for a in args))
    ns = types.namespace()
    for (ptype, name, _), arg in zip(ins, args):
        ns[name] = numpy.broadcast_to(numpy.asarray(arg).astype(types.dtype(ptype), copy=False), shape)
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mapped = numpy.broadcast_to(eval(compile_expression(kernel.map_expr), ns), shape)  # noqa: S307
    rtype = types.dtype(kernel.reduce_type or outs[0][0])
    axes = tuple(range(len(shape))) if axis is None else tuple(a % len(shape) for a in numpy.atleast_1d(axis))
    moved = numpy.moveaxis(mapped.astype(rtype), axes, tuple(range(len(shape) - len(axes), len(shape))))
    values = moved.reshape(*moved.shape[:len(shape) - len(axes)], -1)
    combine = compile_expression(kernel.reduce_expr)
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while values.shape[-1] > 1:  # pairwise: halves combined, an odd last element carried
            half = values.shape[-1] // 2
            pair = eval(combine, {**types.namespace(), "a": values[..., :half],  # noqa: S307
                                  "b": values[..., half:2 * half]})
            pair = numpy.asarray(pair).astype(rtype)
            values = numpy.concatenate([pair, values[..., 2 * half:]], axis=-1)
        if values.shape[-1] == 0:
            values = numpy.full((*values.shape[:-1], 1), eval(compile_expression(kernel.identity),  # noqa: S307
                                                               types.namespace()), dtype=rtype)
    reduced = values[..., 0]
    out_shape = tuple(1 if d in axes else n for d, n in enumerate(shape)) if keepdims else reduced.shape
    target = out if out is not None else numpy.empty(out_shape, dtype=types.dtype(outs[0][0]))
    post = {**types.namespace(), "a": reduced.reshape(target.shape), "_in_ind_size": int(numpy.prod(shape)),
            "_out_ind_size": target.size}
    _run(compile_statements(kernel.post_map_expr), post, types, {outs[0][1]: target})
    return target
