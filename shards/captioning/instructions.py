"""Instructions: the versioned files that tell the captioner and the language model what to write.

An instruction file is TOML (the built-in ones live in ``instructions/`` beside this module; users pass their own
with ``--captioner-instruction FILE`` / ``--llm-instruction FILE``)::

    name = "captioner"          # a short name
    version = "1"               # bump when the text changes meaning
    stage = "captioner"         # "captioner" (a vision-language model sees the drawing) or "llm"
    max_words = 120             # given to the prompts as {{ max_words }}
    templates = ["..."]         # llm only: caption patterns shown to the model ({placeholders} it fills in)
    system = "..."              # the system message (may be empty)
    user = "..."                # the user message; the captioner's is sent together with the drawing

``system`` and ``user`` are Jinja2 templates over the drawing's fields (:data:`FIELDS`); a field the record does
not know is empty, so optional text is wrapped in ``{% if field %}``. A template that names any other variable is
refused when the file is loaded, with the list of known fields.

**Version**: ``<name>-v<version>@<first 8 hex digits of the SHA-256 of the file's bytes>``, e.g.
``captioner-v1@3f2a9c1e``. It goes into the provenance of every caption written with the file, so an edited
file is never mistaken for the original even when its ``version`` was not bumped.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import jinja2
import jinja2.meta
import jinja2.sandbox

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..captions import parse_templates

#: The directory of the built-in instruction files (installed as package data).
BUILTIN_DIR = Path(__file__).with_name("instructions")
#: Built-in instruction per stage.
DEFAULTS = {"captioner": "captioner-v1", "llm": "enrich-v1"}
STAGES = ("captioner", "llm")

#: Fields the templates of each stage may use.
RECORD_FIELDS = ("object", "a_object", "view", "title", "class_name", "class_code", "caption", "patent_id",
                 "grant_date")
FIELDS: Dict[str, Tuple[str, ...]] = {
    "captioner": RECORD_FIELDS + ("max_words",),
    "llm": RECORD_FIELDS + ("description", "n", "templates", "max_words"),
}
_KEYS = {"name", "version", "stage", "max_words", "templates", "system", "user"}


@dataclass(frozen=True)
class Instruction:
    """A loaded, checked instruction file (module docstring)."""

    name: str
    version: str
    stage: str
    system: str
    user: str
    max_words: int
    templates: Tuple[str, ...]
    digest: str
    source: str
    _compiled: Dict[str, jinja2.Template] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def id(self) -> str:
        """The version that goes into provenance: ``<name>-v<version>@<digest8>``."""
        return f"{self.name}-v{self.version}@{self.digest[:8]}"

    def render(self, fields: Mapping[str, object]) -> Tuple[str, str]:
        """``(system, user)`` for one drawing; unknown fields are empty."""
        values = {"max_words": self.max_words, "templates": list(self.templates), **fields}
        return (self._compiled["system"].render(values).strip(), self._compiled["user"].render(values).strip())

    def with_templates(self, templates: Tuple[str, ...]) -> "Instruction":
        """The same instruction with other caption patterns (``--caption-patterns``); the digest covers them."""
        h = hashlib.sha256(self.digest.encode() + "\x1f".join(templates).encode()).hexdigest()
        return Instruction(self.name, self.version, self.stage, self.system, self.user, self.max_words,
                           tuple(templates), h, self.source, self._compiled)


_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.ChainableUndefined, keep_trailing_newline=False,
                                                    autoescape=False)


def builtin_names() -> List[str]:
    """The built-in instruction names (file stems)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def resolve(spec: Optional[str], stage: str) -> Path:
    """The file of an instruction given by built-in name (``enrich-v1``) or path; ``None``: the stage's default."""
    spec = spec or DEFAULTS[stage]
    p = Path(spec)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ValueError(f"instruction file {spec!r} not found")
        return p
    builtin = BUILTIN_DIR / f"{spec}.toml"
    if not builtin.is_file():
        raise ValueError(f"unknown instruction {spec!r}: give a .toml file or a built-in name "
                         f"({', '.join(builtin_names())})")
    return builtin


def load_instruction(spec: Optional[str], stage: str) -> Instruction:
    """Load and check an instruction (module docstring) for ``stage``. Raises ValueError with the file and reason."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} ({', '.join(STAGES)})")
    path = resolve(spec, stage)
    raw = path.read_bytes()
    where = str(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"instruction file {where}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"instruction file {where}: unknown key(s) {unknown}; known: {', '.join(sorted(_KEYS))}")
    for k in ("name", "version", "stage", "user"):
        if not isinstance(data.get(k), (str, int)) or not str(data.get(k)).strip():
            raise ValueError(f"instruction file {where}: '{k}' is required (a non-empty string)")
    if data["stage"] != stage:
        raise ValueError(f"instruction file {where} is for the stage {data['stage']!r}, not {stage!r}")
    max_words = data.get("max_words", 60)
    if not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"instruction file {where}: 'max_words' must be a positive integer")
    templates: Tuple[str, ...] = ()
    if stage == "llm":
        if not isinstance(data.get("templates"), list):
            raise ValueError(f"instruction file {where}: 'templates' (a list of caption patterns) is required "
                             "for the llm stage")
        templates = parse_templates(data["templates"], f"instruction file {where}", fields=None)
    elif "templates" in data:
        raise ValueError(f"instruction file {where}: 'templates' belongs to the llm stage only")
    compiled = {}
    for part in ("system", "user"):
        text = str(data.get(part) or "")
        try:
            ast = _ENV.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"instruction file {where}: '{part}' line {exc.lineno}: {exc.message}") from None
        bad = sorted(jinja2.meta.find_undeclared_variables(ast) - set(FIELDS[stage]))
        if bad:
            raise ValueError(f"instruction file {where}: '{part}' names unknown field(s) {bad}; known for the "
                             f"{stage} stage: {', '.join(FIELDS[stage])}")
        compiled[part] = _ENV.from_string(text)
    return Instruction(str(data["name"]).strip(), str(data["version"]).strip(), stage, str(data.get("system") or ""),
                       str(data["user"]), max_words, templates, hashlib.sha256(raw).hexdigest(), where, compiled)
