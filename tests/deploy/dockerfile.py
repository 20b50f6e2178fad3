"""A small Dockerfile reader: instructions grouped by build stage, and .dockerignore rules.

Enough of the format for the checks in test_dockerfile.py: line continuations, comments,
parser directives, JSON (exec) and shell forms. It is not a general parser.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    arguments: str  # the rest of the instruction, continuations joined
    line: int

    def exec_form(self) -> list[str]:
        """The JSON-array form of CMD/ENTRYPOINT/HEALTHCHECK CMD, or the shell words."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in text else text
        text = text.strip()
        return json.loads(text) if text.startswith("[") else text.split()


@dataclass(frozen=True)
class Stage:
    name: str | None
    base: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs set in this stage (the key=value form only)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.arguments):
                values[key] = value.strip('"')
        return values


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) per instruction, continuations joined, comments dropped."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(part for part in pending if part)))
        pending = []
    assert not pending, "Dockerfile ends inside a line continuation"
    return lines


def read_stages(path: Path) -> tuple[list[Instruction], list[Stage]]:
    """The global ARGs before the first FROM, and the stages in order."""
    global_args: list[Instruction] = []
    # (name, base, instructions) per stage, frozen into Stages at the end
    stages: list[tuple[str | None, str, list[Instruction]]] = []
    for line, text in _logical_lines(path.read_text()):
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), line)
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append((name, words[0], []))
        elif stages:
            stages[-1][2].append(instruction)
        else:
            global_args.append(instruction)
    return global_args, [Stage(name, base, tuple(body)) for name, base, body in stages]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for instruction in instructions:
        name, _, default = instruction.arguments.partition("=")
        defaults[name] = default.strip('"')
    return defaults


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether the build context leaves `path` out: the last pattern that matches the
    path or one of its parent directories decides (a `!` pattern re-includes)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        # `**/x` also matches `x` at the top of the context.
        globs = [glob, glob[3:]] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            excluded = not negated
    return excluded


def read_dockerignore(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]
