"""Rewrite old-style registrations (``params={...json schema...}``) into typed signatures.

    python tools/convert_registration.py src/attrflow/methods/new_method.py [...]
    python -m attrflow.catalog --write

An old registration declares parameters as a JSON-schema literal,
``@register_method("x", params={"steps": {"type": "integer", "minimum": 1, "default": 3}})``;
this removes ``params=`` and writes each fragment as the parameter's annotation
(``steps: Annotated[int, Ge(1)] = 3``, `attrflow.params`), keeping the signature's defaults, and
adds the imports. Module-level constants holding a shared schema are resolved but left in place
(delete them once unused). Review the result: long descriptions are wrapped, and a default
such as 0.03137254901960784 is better written 8 / 255 by hand.
"""

import ast
import json
import sys
import textwrap
from pathlib import Path
TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}

def num(v):
    return repr(v)

def base_type(s):
    if "enum" in s:
        return "Literal[" + ", ".join(json.dumps(v) for v in s["enum"] if v is not None) + "]", None in s["enum"]
    t = s.get("type")
    nullable = False
    if isinstance(t, list):
        nullable = "null" in t
        (t,) = [x for x in t if x != "null"]
    if t == "array":
        inner = ann(s["items"]) if "items" in s else None
        return (f"list[{inner}]" if inner else "list"), nullable
    if t == "object":
        return "dict[str, Any]", nullable
    return TYPES[t], nullable

def meta(s, used):
    out = []
    for key, cls in (("minimum", "Ge"), ("exclusiveMinimum", "Gt"), ("maximum", "Le"), ("exclusiveMaximum", "Lt")):
        if key in s:
            out.append(f"{cls}({num(s[key])})"); used.add(cls)
    for key in ("minLength", "minItems"):
        if key in s:
            out.append(f"MinLen({s[key]})"); used.add("MinLen")
    if s.get("uniqueItems"):
        out.append("Unique()"); used.add("Unique")
    if "not" in s:
        assert s["not"] == {"multipleOf": 2}, s
        out.append("Odd()"); used.add("Odd")
    if "format" in s:
        assert s["format"] == "method-entry", s
        out.append("MethodEntry()"); used.add("MethodEntry")
    known = {"type", "enum", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "minItems", "uniqueItems", "not", "format", "default", "description", "items"}
    assert set(s) <= known, s
    return out

USED = set()

def ann(s, doc=False):
    t, nullable = base_type(s)
    if t.startswith("Literal"):
        USED.add("Literal")
    m = meta(s, USED)
    if doc and "description" in s:
        m.append("DOC")
    if nullable:
        t = f"{t} | None"
    if m:
        USED.add("Annotated")
        t = f"Annotated[{t}, {', '.join(m)}]"
    return t

def doc_call(text, width):
    lit = json.dumps(text, ensure_ascii=False)
    if len(lit) + 5 <= width:
        return f"Doc({lit})"
    parts = textwrap.wrap(text, width=max(40, width - 4), drop_whitespace=False, break_long_words=False)
    return "Doc(\n" + "\n".join(json.dumps(p, ensure_ascii=False) for p in parts) + "\n)"

def render_annotation(s, indent, extra):
    USED.add("Doc") if "description" in s else None
    a = ann(s, doc=True)
    if "DOC" not in a:
        return a
    USED.add("Doc")
    one = a.replace("DOC", f"Doc({json.dumps(s['description'], ensure_ascii=False)})")
    if indent + len(one) + extra <= 100:
        return one
    # multi-line: Annotated[\n  base,\n  meta...,\n  Doc(...)\n]
    inner_ind = " " * (indent + 4)
    t, nullable = base_type(s)
    m = meta(s, USED)
    if nullable:
        t = f"{t} | None"
    lines = [f"{inner_ind}{t},"] + [f"{inner_ind}{x}," for x in m]
    d = doc_call(s["description"], 96 - indent - 8)
    if "\n" in d:
        dl = d.split("\n")
        lines.append(inner_ind + dl[0])
        lines += [inner_ind + "    " + x for x in dl[1:-1]]
        lines.append(inner_ind + dl[-1] + ",")
    else:
        lines.append(f"{inner_ind}{d},")
    return "Annotated[\n" + "\n".join(lines) + "\n" + " " * indent + "]"

def _module_literals(tree):
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                pass
    return found


def _literal(node, literals):
    if isinstance(node, ast.Name):
        return literals[node.id]
    return ast.literal_eval(node)


def convert(path):
    src = Path(path).read_text()
    lines = src.splitlines(keepends=True)
    offsets = [0]
    for l in lines: offsets.append(offsets[-1] + len(l))
    pos = lambda ln, col: offsets[ln - 1] + len(lines[ln - 1].encode()[:col].decode())
    tree = ast.parse(src)
    literals = _module_literals(tree)
    edits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and getattr(dec.func, "id", None) in ("register_method", "register_metric")):
                continue
            params_kw = [k for k in dec.keywords if k.arg == "params"]
            if not params_kw:
                continue  # already converted, or no parameters
            params = _literal(params_kw[0].value, literals)
            kws = [k for k in dec.keywords if k.arg != "params"]
            parts = [ast.get_source_segment(src, a) for a in dec.args] + [f"{k.arg}={ast.get_source_segment(src, k.value)}" for k in kws]
            one = f"{dec.func.id}({', '.join(parts)})"
            if len(one) + 1 > 100:
                one = f"{dec.func.id}(\n" + "".join(f"    {p},\n" for p in parts) + ")"
            edits.append((pos(dec.lineno, dec.col_offset), pos(dec.end_lineno, dec.end_col_offset), one))
            args = node.args
            for arg in [*args.args, *args.kwonlyargs]:
                if arg.arg not in params:
                    continue
                indent = arg.col_offset
                default_len = 12
                new = render_annotation(params[arg.arg], indent, len(arg.arg) + 2 + default_len)
                if arg.annotation is None:
                    e = pos(arg.end_lineno, arg.end_col_offset)
                    edits.append((e, e, ": " + new))
                else:
                    edits.append((pos(arg.annotation.lineno, arg.annotation.col_offset), pos(arg.annotation.end_lineno, arg.annotation.end_col_offset), new))
    edits.sort(reverse=True)
    for a, b, t in edits:
        src = src[:a] + t + src[b:]
    Path(path).write_text(src)
    return sorted(USED)


def add_imports(path, used):
    src = Path(path).read_text()
    lines = src.split("\n")
    typing_names = [n for n in ("Annotated", "Literal") if n in used]
    param_names = sorted(n for n in used if n not in ("Annotated", "Literal"))
    if typing_names:
        for i, l in enumerate(lines):
            if l.startswith("from typing import "):
                names = {n.strip() for n in l[len("from typing import "):].split(",")}
                names |= set(typing_names)
                lines[i] = "from typing import " + ", ".join(sorted(names))
                break
        else:
            # end of the first import block after __future__
            start = next(i for i, l in enumerate(lines) if l.startswith("from __future__"))
            j = start + 1
            while j < len(lines) and lines[j].strip() == "":
                j += 1
            k = j
            while k < len(lines) and (lines[k].startswith("import ") or lines[k].startswith("from ")):
                k += 1
            import sys as _sys
            first = lines[j:k]
            stdlib = all(l.split()[1].split(".")[0] in _sys.stdlib_module_names for l in first)
            if stdlib:
                lines[j:k] = first + ["from typing import " + ", ".join(typing_names)]
            else:
                lines[j:j] = ["from typing import " + ", ".join(typing_names), ""]
    if param_names:
        new = "from attrflow.params import " + ", ".join(param_names)
        idx = [i for i, l in enumerate(lines) if l.startswith("from attrflow.")]
        pos = next((i for i in idx if lines[i] > new), idx[-1] + 1)
        # do not split a parenthesised import
        lines.insert(pos, new)
    Path(path).write_text("\n".join(lines))


if __name__ == "__main__":
    for p in sys.argv[1:]:
        USED.clear()
        used = convert(p)
        add_imports(p, used)
        print(p, used)
