"""docs/math.md matches the code.

The rules this file applies:

1. Bytes. The file is UTF-8 and every character is printable (``str.isprintable``) or a newline: no control
   characters such as the BEL that ``\\a`` leaves when the backslash of ``\\approx`` is lost, and no tabs.
2. Code names. Every inline code span (text between single backticks, outside fenced blocks) that names
   code must still name something in the package:
   a. a path (it holds a "/": ``npvit/kernels/*.py``, ``benchmarks/NOTES.md``) matches a file (glob);
   b. ``python -m MODULE ...`` names an importable module;
   c. a dotted name starting with ``npvit.`` resolves, by import and attribute access;
   d. a name starting with a class of the package (``ViT.backward``, ``AdamW.step``) names an
      attribute of that class;
   e. a parameter name or dropout site name, or the prefix of one (``blocks.i.attn.qkv.w``, ``head.fc0``,
      ``blocks.0.mlp.drop1``; ``blocks.i`` for any block), is one of the model's, as npvit.reference uses
      them (every pool, two head layers);
   f. any other name, plain or dotted (``layernorm_backward``, ``model.grads``), has every part occur in the
      package's source as a name (definition, variable, argument, attribute, keyword) or a string; a call
      (``softmax_forward(st, axis=-2, ...)``) is checked by its callee and keyword names, an assignment
      (``dz = p.copy()``) by its target, a keyword (``keep=False``) by its name. OUTSIDE_NAMES lists the
      few names the text quotes from other libraries.
   Spans that name nothing (expressions, shapes, literals, quoted strings such as ``"flatten"``) are not
   checked: the rule is that a name the text points a reader to must exist, not that the prose compiles.
3. The worked example (section 14). Its fenced blocks starting with ``# worked example`` hold exactly the
   expected names, and each value is what npvit.reference computes, to the 4 decimals shown.
4. The shape trace (section 13). Each parameter it lists has that shape in the Keras preset, the first and
   last shapes are the images' and the logits', and the stated parameter count is the model's.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import importlib
import importlib.util
import keyword
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit import ViT, ViTConfig
from npvit import reference as ref

ROOT = Path(__file__).resolve().parents[2]
MATH = ROOT / "docs" / "math.md"
OUTSIDE_NAMES: frozenset[str] = frozenset()  # names of other libraries the text quotes (none today)

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = re.compile(rf"{IDENT}(?:\.(?:{IDENT}|[0-9]+))*")


def text() -> str:
    return MATH.read_text(encoding="utf-8")


def inline_spans(markdown: str) -> list[str]:
    """Inline code spans outside fenced blocks."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


# ---- what the package holds -----------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def source_names() -> frozenset[str]:
    """Every name and identifier-like string in npvit's source."""
    names: set[str] = set()
    for path in (ROOT / "npvit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.update((node.asname or node.name).split("."))
                names.update(node.name.split("."))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value):
                names.update(node.value.split("."))
    return frozenset(names)


@lru_cache(maxsize=None)
def class_modules() -> dict[str, list[str]]:
    """Class name -> the modules of the package that define a class of that name, in sorted order."""
    modules: dict[str, list[str]] = {}
    for path in sorted((ROOT / "npvit").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                modules.setdefault(node.name, []).append(module)
    return modules


def class_attribute(class_name: str, attrs: list[str]) -> bool:
    """Whether some class ``class_name`` of the package has the attribute path ``attrs`` (modules imported
    only as needed: an optional dependency such as torch is imported only if the name needs it)."""
    for module_name in class_modules().get(class_name, []):
        try:
            obj = getattr(importlib.import_module(module_name), class_name)
            for attr in attrs:
                obj = getattr(obj, attr)
        except (ImportError, AttributeError):
            continue
        return True
    return False


@lru_cache(maxsize=None)
def model_names() -> frozenset[str]:
    """Every parameter name and dropout (and drop path) site name of the model, and every dotted prefix of one, as the
    reference uses them (flatten and cls pooling, two head layers)."""
    names: set[str] = set()
    for pool in ("flatten", "cls"):
        cfg = dataclasses.replace(ViTConfig.tiny(), pool=pool, head_units=(6, 5), dropout=0.1,
                                  attention_dropout=0.1, head_dropout=0.1, drop_path=0.1)
        params = ref.init_params(cfg)
        sites: list[str] = []
        ref.vit_forward(params, np.zeros((1, cfg.image_size, cfg.image_size, cfg.channels)), cfg,
                        lambda site, shape, rate: sites.append(site) or np.ones(shape, dtype=bool))
        for name in [*params, *sites]:
            # Names are looked up as block 0's; drop path sites exist only from block 1 on (block 0's rate is 0).
            parts = re.sub(r"^blocks\.[0-9]+(?=\.)", "blocks.0", name).split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(names)


def resolve_npvit(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def check_name(name: str) -> str | None:
    """None when ``name`` (a plain or dotted name) exists; otherwise why not."""
    if name.startswith("npvit."):
        return None if resolve_npvit(name) else "does not resolve"
    normalized = re.sub(r"^blocks\.(i|[0-9]+)(?=\.|$)", "blocks.0", name)
    if normalized in model_names():
        return None
    first, *rest = name.split(".")
    if first in class_modules() and rest:
        return None if class_attribute(first, rest) else f"class {first} has no attribute {'.'.join(rest)}"
    missing = [p for p in name.split(".")
               if not (p.isdigit() or p in source_names() or p in OUTSIDE_NAMES or keyword.iskeyword(p))]
    return f"{missing} not in npvit's source" if missing else None


def check_span(span: str) -> str | None:
    """None when the span names nothing, or names something that exists; otherwise why not."""
    span = span.strip()
    if "/" in span and re.fullmatch(r"[\w./*-]+", span):
        return None if glob.glob(str(ROOT / span)) else "no such file"
    if m := re.fullmatch(r"python -m ([\w.]+)(?: .*)?", span):
        return None if importlib.util.find_spec(m.group(1)) else "no such module"
    if DOTTED.fullmatch(span):
        return check_name(span)
    if m := re.fullmatch(rf"({DOTTED.pattern})\((.*)\)", span):  # a call: callee and keyword names
        keywords = re.findall(rf"\b({IDENT})=(?!=)", m.group(2))
        problems = [check_name(m.group(1))] + [check_name(k) for k in keywords]
        return next((p for p in problems if p), None)
    if m := re.fullmatch(rf"({IDENT})\s*(?:[-+*/]?=)(?!=)\s*\S.*", span):  # an assignment: its target
        return check_name(m.group(1))
    if m := re.fullmatch(rf"({IDENT})=(?!=).*", span):  # a keyword argument
        return check_name(m.group(1))
    return None


# ---- 1 and 2 --------------------------------------------------------------------------------------------------
def test_math_md_holds_only_printable_characters() -> None:
    raw = MATH.read_bytes()
    content = raw.decode("utf-8")  # raises on bytes that are not UTF-8
    bad = [(content.count("\n", 0, i) + 1, repr(c))
           for i, c in enumerate(content) if c != "\n" and not c.isprintable()]
    assert not bad, f"non-printable characters in docs/math.md (line, character): {bad[:10]}"


def test_code_names_quoted_in_math_md_exist() -> None:
    spans = inline_spans(text())
    checked = [s for s in spans if check_span(s) is None]
    problems = [f"`{s}`: {why}" for s in spans if (why := check_span(s))]
    assert not problems, "docs/math.md quotes code that does not exist:\n" + "\n".join(problems)
    assert len(spans) > 300 and len(checked) == len(spans)


@pytest.mark.parametrize("span,ok", [
    ("npvit.kernels.dense.dense_forward", True), ("npvit.kernels.dense.dense_forwards", False),
    ("npvit.reference", True), ("npvit.nothing_here", False), ("ViT.backward", True),
    ("AdamW.no_such_method", False), ("layernorm_backward", True), ("layernorm_backwards", False),
    ("model.grads", True), ("blocks.i.attn.qkv.w", True), ("blocks.3.mlp.fc1", True), ("head.fc0.w", True),
    ("blocks.i.mlp.drop1", True), ("head_drop", True), ("head.drop2", False), ("blocks.0.mlp.fc2", False),
    ("softmax_forward(st, axis=-2, ...)", True), ("softmax_forward(st, axiz=-2)", False),
    ("dz = p.copy()", True), ("dzz = p.copy()", False), ("keep=False", True), ("keeps=False", False),
    ("npvit/kernels/*.py", True), ("npvit/kernel/*.py", False), ("python -m npvit.reference", True),
    ("python -m npvit.referenc", False), ("(B, H, N, d)", True), ('"flatten"', True), ("x2 @ row_mean", True),
])
def test_the_name_checker_itself(span, ok) -> None:
    assert (check_span(span) is None) == ok, check_span(span)


# ---- 3: the worked example ------------------------------------------------------------------------------------
def evaluate(node: ast.AST):
    """A number, +-*/ of numbers, or nested lists of them; nothing else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.List):
        return [evaluate(e) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        return a * b if isinstance(node.op, ast.Mult) else a / b
    raise ValueError(f"unexpected expression in a worked example: {ast.dump(node)}")


def worked_example(title: str) -> dict[str, np.ndarray]:
    blocks = re.findall(r"^```python\n(# worked example: [^\n]*\n.*?)^```", text(), flags=re.S | re.M)
    matches = [b for b in blocks if b.startswith(f"# worked example: {title}")]
    assert len(matches) == 1, f"docs/math.md must have one worked example block '{title}'"
    values = {}
    for statement in ast.parse(matches[0]).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1
        values[statement.targets[0].id] = np.array(evaluate(statement.value), dtype=float)
    return values


def assert_documented(doc: dict, name: str, computed) -> None:
    computed = np.asarray(computed, dtype=float)
    assert doc[name].shape == computed.shape, f"{name}: documented {doc[name].shape}, computed {computed.shape}"
    error = float(np.abs(doc[name] - computed).max())
    assert error <= 5.001e-5, (f"{name}: documented {doc[name].tolist()}, "
                               f"computed {np.round(computed, 4).tolist()}")


def test_worked_example_layer_norm() -> None:
    doc = worked_example("layer norm")
    assert set(doc) == {"x", "gamma", "beta", "mu", "var", "rstd", "xhat", "y", "dy", "dgamma", "dbeta", "dx"}
    x = doc["x"]
    y, cache = ref.layernorm_forward(x, doc["gamma"], doc["beta"], 1e-6)
    xhat, rstd = cache
    dx, dgamma, dbeta = ref.layernorm_backward(doc["dy"], cache, doc["gamma"])
    assert_documented(doc, "mu", x.mean(axis=-1))
    assert_documented(doc, "var", x.var(axis=-1))
    for name, value in (("rstd", rstd[:, 0]), ("xhat", xhat), ("y", y), ("dgamma", dgamma), ("dbeta", dbeta),
                        ("dx", dx)):
        assert_documented(doc, name, value)


def test_worked_example_attention() -> None:
    doc = worked_example("attention")
    assert set(doc) == {"x", "S", "P", "O", "dO", "dV", "dP", "dS", "dQ", "dK", "dx"}
    x = doc["x"][None]  # (1, 3, 2): one image of 3 tokens of width 2
    eye = np.eye(2)
    w_qkv = np.concatenate([eye, eye, eye], axis=1)  # W_q = W_k = W_v = I, one head of width 2
    y, cache, p = ref.attention_forward(x, w_qkv, np.zeros(6), eye, np.zeros(2), num_heads=1)
    _, q, k, v, c_soft, a, _, _ = cache
    dx, *_ = ref.attention_backward(doc["dO"][None], cache, w_qkv, eye)
    do = doc["dO"]
    dp = do @ v[0, 0].T
    ds = ref.softmax_backward(dp, (p[0, 0], -1))
    assert_documented(doc, "S", q[0, 0] @ k[0, 0].T / math.sqrt(2))
    assert_documented(doc, "P", p[0, 0])
    assert_documented(doc, "O", y[0])  # W_o = I: the layer's output is O
    assert_documented(doc, "dV", a[0, 0].T @ do)
    assert_documented(doc, "dP", dp)
    assert_documented(doc, "dS", ds)
    assert_documented(doc, "dQ", ds @ k[0, 0] / math.sqrt(2))
    assert_documented(doc, "dK", ds.T @ q[0, 0] / math.sqrt(2))
    assert_documented(doc, "dx", dx[0])
    assert_documented(doc, "dx", doc["dQ"] + doc["dK"] + doc["dV"])  # the text's sum over the three uses


# ---- 4: the shape trace ---------------------------------------------------------------------------------------
def shape_section() -> str:
    match = re.search(r"^## 13\. Shapes through the Keras model\n(.*?)^## ", text(), flags=re.S | re.M)
    assert match, "docs/math.md must have section 13, the shapes through the Keras model"
    return match.group(1)


def test_shape_trace_matches_the_keras_model() -> None:
    section = shape_section()
    cfg = ViTConfig.keras()
    model = ViT(cfg, dtype="float32")
    shapes = {n: tuple(p.shape) for n, p in model.params.items()}
    table = "\n".join(line for line in section.splitlines() if line.startswith("| "))
    listed = re.findall(r"`([a-z_][\w.]*)` \(([0-9, ]*)\)", table)
    assert len(listed) >= 20
    seen = set()
    for name, shape_text in listed:
        shape = tuple(int(s) for s in shape_text.replace(" ", "").split(",") if s)
        blocks = range(cfg.depth) if name.startswith("blocks.i.") else [None]
        for i in blocks:
            full = name if i is None else name.replace("blocks.i.", f"blocks.{i}.", 1)
            assert full in shapes, f"section 13 lists {full}, which the Keras model does not have"
            assert shapes[full] == shape, f"section 13 gives {full} shape {shape}, the model {shapes[full]}"
            seen.add(full)
    assert seen == set(shapes), f"section 13 leaves out {sorted(set(shapes) - seen)[:5]}"
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert "(256, 72, 72, 3)" in rows[0] and "(256, 100)" in rows[-2]
    count = re.search(r"([0-9,]+) parameters", section)
    assert count and int(count.group(1).replace(",", "")) == model.num_params()
