"""What a request asks its output to follow: the grammar spec that travels with its
SamplingParams from the api process to the engine (plain data, no xgrammar objects).

    kind            value
    json_schema     the schema's JSON text (checked in the api process)
    json_object     "" (any JSON object)
    regex           the pattern
    choice          a JSON list of the allowed strings
    ebnf            the grammar, with a `root` rule
    structural_tag  xgrammar's structural-tag JSON (free text, or tool calls whose
                    arguments follow their schemas)
"""

from __future__ import annotations

from dataclasses import dataclass

GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "choice", "ebnf", "structural_tag")


@dataclass(frozen=True)
class GrammarSpec:
    kind: str
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise ValueError(f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, "
                             f"not {self.kind!r}")
