"""A griffe extension: read asynccache's reST-flavoured docstrings as Markdown.

The docstrings are written for ``help()`` and doctest: ``>>>`` examples, ``::`` literal
blocks, ````literal```` and ``:class:`~a.B``` roles. mkdocstrings renders Markdown, where
``>>>`` is a quote and ``x[0]["k"]`` a link, so this turns each into its Markdown form
when the API reference is built. The source docstrings stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_DOCTEST_FLAG = re.compile(r"\s*# doctest: \+\w+")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _inline(line: str) -> str:
    return _LITERAL.sub(r"`\1`", _ROLE.sub(_role, line))


def to_markdown(text: str) -> str:
    """The docstring with doctests and literal blocks fenced, roles made code spans."""
    lines = text.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while index < len(lines) and lines[index].strip():
                block.append(_DOCTEST_FLAG.sub("", lines[index][len(indent):]))
                index += 1
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            head = line[:-2].rstrip()
            out.append(_inline(head + ":") if head.strip() else "")
            index += 1
            while index < len(lines) and not lines[index].strip():
                index += 1
            base = len(line) - len(stripped)
            block = []
            while index < len(lines) and (not lines[index].strip() or
                                          len(lines[index]) - len(lines[index].lstrip()) > base):
                block.append(lines[index])
                index += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                cut = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                out += ["", " " * base + "```text", *(" " * base + b[cut:] for b in block),
                        " " * base + "```", ""]
            continue
        out.append(_inline(line))
        index += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring with :func:`to_markdown` as objects are loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
