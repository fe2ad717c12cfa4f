"""A small Dockerfile reader for the container tests: stages, instructions, ENV, exec forms.

Enough of the Dockerfile syntax for our own file (continuation lines, comments, ``KEY=value``
ENV pairs with ``$VAR`` expansion, JSON exec forms); not a general parser.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # the text after the keyword, continuation lines joined
    comments: list[str] = field(default_factory=list)  # comment lines right above it


@dataclass
class Stage:
    base: str  # the FROM image with global ARGs expanded
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, outer: dict[str, str] | None = None) -> dict[str, str]:
        """The ENV this stage sets, in order, ``$VAR`` expanded against earlier values and
        ``outer`` (what the base image would provide, e.g. PATH)."""
        scope = dict(outer or {})
        env: dict[str, str] = {}
        for inst in self.all("ENV"):
            for token in shlex.split(inst.args):
                key, sep, value = token.partition("=")
                if not sep:
                    raise ValueError(f"ENV {inst.args!r}: use the KEY=value form")
                value = _VAR.sub(lambda m: scope.get(m.group(1) or m.group(2), ""), value)
                env[key] = scope[key] = value
        return env


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def logical_lines(text: str) -> list[tuple[str, list[str]]]:
    """(instruction line, comments above it); backslash continuations joined, comment lines
    inside a continued instruction dropped (as Docker does)."""
    out: list[tuple[str, list[str]]] = []
    comments: list[str] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if not current:
                comments.append(line.lstrip("#").strip())
            continue
        if not line:
            if not current:
                comments = []
            continue
        if line.endswith("\\"):
            current.append(line[:-1].strip())
            continue
        current.append(line)
        out.append((" ".join(current), comments))
        current, comments = [], []
    if current:
        out.append((" ".join(current), comments))
    return out


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, comments in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
            continue
        if keyword == "FROM":
            parts = args.split()
            base = _VAR.sub(lambda m: global_args.get(m.group(1) or m.group(2), ""), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
            continue
        if not stages:
            continue  # parser directives and comments before the first FROM
        stages[-1].instructions.append(Instruction(keyword, args, comments))
    return Dockerfile(global_args, stages)


def exec_form(inst: Instruction | None) -> list[str] | None:
    """The JSON array of an exec-form ENTRYPOINT/CMD, or None for the shell form."""
    if inst is None:
        return None
    try:
        value = json.loads(inst.args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None
