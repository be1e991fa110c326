"""Every problem of a config at once, with its ``file:line:col``: what ``toolguard check`` prints.

Pure: no I/O besides reading the config file. :func:`check_config` reads a file (YAML, JSON,
TOML) or takes a mapping and returns a :class:`CheckReport`: **errors** (the file does not parse,
a value is out of range, a key is unknown or written twice, an intent names an identity or a
tool that is not defined, ``${ENV}`` is not set) and **warnings** (the config loads, but part of
it can never take effect: a tool no intent lists, an operation no tool performs, an intent rule
wider than its identity's ceiling or one that can never apply, placeholders that differ by one
character, an identity the config disables). :func:`toolguard.config.load_config` (and so
``Guard.from_config``) raises the errors as one :class:`ConfigError`; warnings never stop a load.

Positions: a YAML file gives ``line:col`` of the key or value at fault (from the loader's marks);
a JSON file gives them when it also reads as YAML (nearly every JSON file does), else only its
syntax errors have a position; a TOML file gives the position of a syntax error only.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_VALUES,
    OPERATION_NAME,
    PLACEHOLDER,
    ConfigProblems,
    GuardConfig,
    Issue,
    Loc,
    TooLarge,
    format_path,
    reference_problems,
    substitute_env,
)
from .errors import ConfigError
from .intent import pattern_covers

__all__ = ["CODES", "CheckReport", "Finding", "Severity", "check_config"]

Severity = Literal["error", "warning"]

CODES: dict[str, Severity] = {
    "syntax": "error",
    "encoding": "error",
    "too-large": "error",
    "not-a-mapping": "error",
    "duplicate-key": "error",
    "env-unset": "error",
    "unstorable": "error",
    "unknown-key": "error",
    "missing": "error",
    "invalid": "error",
    "undefined-identity": "error",
    "undefined-tool": "error",
    "budget-tool": "error",
    "unused-tool": "warning",
    "unused-operation": "warning",
    "wider-than-identity": "warning",
    "unreachable": "warning",
    "placeholder-typo": "warning",
    "disabled-identity": "warning",
    "shadow-mode": "warning",
}
"""Every problem code and its severity (described in docs/cli.md, ``toolguard check``)."""

_Mark = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where (``file:line:col`` and the path in the config), how bad, what."""

    severity: Severity
    code: str
    path: str
    """``intents.process-job.allow.writ``; ``""`` for the file as a whole."""
    message: str
    file: str | None = None
    line: int | None = None
    """1-based; None when the format gives no position."""
    col: int | None = None
    """1-based, in characters."""

    def where(self) -> str:
        """``file:line:col``, or as much of it as is known."""
        out = self.file or "<config>"
        if self.line is not None:
            out += f":{self.line}"
            if self.col is not None:
                out += f":{self.col}"
        return out

    def format(self) -> str:
        """One line, as ruff prints: ``toolguard.yaml:4:3: error: path: message [code]``."""
        path = f"{self.path}: " if self.path else ""
        return f"{self.where()}: {self.severity}: {path}{self.message} [{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_config` found; ``config`` is the loaded config when there is no error."""

    source: str | None
    findings: tuple[Finding, ...]
    config: GuardConfig | None
    counts: Mapping[str, int]
    """How many ``identities``, ``tools`` and ``intents`` the file defines."""
    disabled: tuple[str, ...] = ()
    """Identities the config disables (``disabled: true``)."""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def error(self) -> ConfigError:
        """The errors as one :class:`ConfigError` (one line per error, ``file:line:col`` first
        when known); ``problems`` lists ``(path, message)``."""
        errors = self.errors
        where = f" in {self.source}" if self.source else ""
        lines = [f"{len(errors)} problem(s){where}:"]
        for f in errors:
            if f.line is not None:
                lines.append(f"  {f.where()}: " + (f"{f.path}: " if f.path else "") + f.message)
            else:
                lines.append(f"  {f.path or '<root>'}: {f.message}")
        return ConfigError(
            "\n".join(lines), problems=[(f.path, f.message) for f in errors], source=self.source
        )


@dataclass(frozen=True, slots=True)
class _Found:
    issue: Issue
    severity: Severity
    mark: _Mark | None = None
    """A position known without the mark map (a syntax error)."""


def check_config(
    source: str | os.PathLike[str] | Mapping[str, Any], *, warnings: bool = True
) -> CheckReport:
    """Check a config file or mapping; every error and (unless ``warnings=False``) warning.

    Raises :class:`ConfigError` only when a file cannot be read at all (it does not exist, is a
    folder, or may not be read): there is nothing to check. Everything found in what was read
    (bad encoding, a syntax error, a file over 1 MiB) is a finding.
    """
    if isinstance(source, Mapping):
        return _Checker(None, None).run(dict(source), warnings=warnings)
    path = Path(source)
    file = str(path)
    checker = _Checker(file, str(path.resolve().parent))
    text = _read(path, checker)
    if text is None:
        return checker.report()
    data = _parse(text, path.suffix.lower(), checker)
    if checker.found and any(f.issue.code == "syntax" for f in checker.found):
        return checker.report()
    return checker.run(data, warnings=warnings)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(data: Any, path: Loc) -> list[Issue]:
    """A NUL or a lone surrogate in any key or text of the config: names, purposes, patterns
    and the rest reach the audit store, which cannot hold them (PostgreSQL refuses NUL; lone
    surrogates are not UTF-8). Refused, rather than recorded under another spelling."""
    found: list[Issue] = []
    items = (
        data.items() if isinstance(data, Mapping)
        else enumerate(data) if isinstance(data, list) else ()
    )  # fmt: skip
    for key, value in items:
        here = (*path, key)
        if isinstance(key, str) and _UNSTORABLE.search(key):
            found.append(Issue(here, _UNSTORABLE_MESSAGE, "unstorable", on_key=True))
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                found.append(Issue(here, _UNSTORABLE_MESSAGE, "unstorable"))
        elif isinstance(value, (Mapping, list)):
            found.extend(_unstorable(value, here))
    return found


_UNSTORABLE_MESSAGE = (
    "holds a NUL character (\\x00) or a lone surrogate, which the audit trail cannot record; "
    "remove it"
)


# -- reading and parsing ------------------------------------------------------------------------


def _read(path: Path, checker: _Checker) -> str | None:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {path} is a folder; give the config file in it", source=str(path)
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {path} cannot be read: {exc.strerror}", source=str(path)
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        checker.add(
            Issue(
                (),
                f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config this "
                "large is a mistake (or an attack): check the path",
                "too-large",
            ),
            mark=None,
        )
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        checker.add(
            Issue(
                (), f"config file {path} is not valid UTF-8 (byte {exc.start}); save it as UTF-8",
                "encoding",
            ),
            mark=(line, col),
        )  # fmt: skip
        return None


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _parse(text: str, suffix: str, checker: _Checker) -> Any:
    """The file's data; its marks (YAML, JSON) and duplicate keys go to ``checker``."""
    if suffix == ".json":
        twice: list[bool] = []

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            if len({key for key, _ in items}) != len(items):
                twice.append(True)
            return dict(items)  # as json.loads: the last value, at the first key's place

        try:
            data = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as exc:
            checker.add(Issue((), f"not valid JSON: {exc.msg}", "syntax"), (exc.lineno, exc.colno))
            return None
        except RecursionError:
            checker.add(Issue((), "not valid JSON: it nests too deeply", "syntax"), None)
            return None
        if twice:  # YAML's reading finds each key written twice, with its position
            _json_marks(text, checker)
        else:  # positions only: read (with YAML, ~50 times json's time) if a finding needs one
            checker.json_text = text
        return data
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = _TOML_POSITION.search(msg)
            mark = (int(m.group(1)), int(m.group(2))) if m else None
            msg = _TOML_POSITION.sub("", msg)
            checker.add(Issue((), f"not valid TOML: {msg}", "syntax"), mark)
            return None
    import yaml

    try:
        return _yaml_marks(text, checker)
    except yaml.MarkedYAMLError as exc:
        where = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "unreadable"
        if exc.context and exc.context_mark is not None and exc.problem:
            detail += f" ({exc.context} on line {exc.context_mark.line + 1})"
        checker.add(
            Issue((), f"not valid YAML: {detail}", "syntax"),
            (where.line + 1, where.column + 1) if where is not None else None,
        )
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        checker.add(
            Issue((), f"not valid YAML: character {exc.character!r} is not allowed", "syntax"),
            (line, col),
        )
    except RecursionError:
        checker.add(Issue((), "not valid YAML: it nests too deeply", "syntax"), None)
    except yaml.YAMLError as exc:
        checker.add(Issue((), f"not valid YAML: {exc}", "syntax"), None)
    return None


def _json_marks(text: str, checker: _Checker) -> None:
    """The positions (and keys written twice) of a JSON file, read as YAML (a JSON document is
    one); a JSON file that YAML cannot read just has no positions."""
    try:
        _yaml_marks(text, checker)
    except Exception:  # any failure only means "no positions"
        checker.marks = None


def _yaml_marks(text: str, checker: _Checker) -> Any:
    """Compose the YAML (or JSON) node tree, record the position of every key and value and
    every key written twice in one mapping; then construct the data from the same tree."""
    import yaml
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        marks = _Marks()
        checker.marks = marks
        if root is None:
            return None
        marks.value[()] = _pos(root)
        seen: set[int] = set()
        stack: list[tuple[Any, Loc]] = [(root, ())]
        budget = MAX_CONFIG_VALUES
        while stack and budget > 0:
            node, path = stack.pop()
            if id(node) in seen:  # an alias: its content is marked where it is written
                continue
            seen.add(id(node))
            budget -= 1
            if isinstance(node, MappingNode):
                first: dict[tuple[str, str], _Mark] = {}
                merges: list[Any] = []
                for key, value in node.value:
                    if key.tag == "tag:yaml.org,2002:merge":
                        merges.append(value)
                        continue
                    if not isinstance(key, ScalarNode):
                        continue
                    sub = (*path, key.value)
                    ident = (key.tag, key.value)
                    if ident in first:
                        checker.add(
                            Issue(
                                sub,
                                f"key {key.value!r} is written twice in this mapping (first at "
                                f"{first[ident][0]}:{first[ident][1]}); only the last one would "
                                "count: merge them",
                                "duplicate-key",
                                on_key=True,
                            ),
                            None,
                        )
                    else:
                        first[ident] = _pos(key)
                    marks.key[sub] = _pos(key)
                    marks.value[sub] = _pos(value)
                    stack.append((value, sub))
                for merged in merges:  # `<<: *base`: keys not written here come from there
                    sources = merged.value if isinstance(merged, SequenceNode) else [merged]
                    for source in sources:
                        if not isinstance(source, MappingNode):
                            continue
                        for key, value in source.value:
                            if isinstance(key, ScalarNode):
                                marks.key.setdefault((*path, key.value), _pos(key))
                                marks.value.setdefault((*path, key.value), _pos(value))
            elif isinstance(node, SequenceNode):
                for i, item in enumerate(node.value):
                    item_path: Loc = (*path, i)
                    marks.value[item_path] = _pos(item)
                    stack.append((item, item_path))
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _pos(node: Any) -> _Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Marks:
    """Positions of keys and values by path, from the YAML node tree."""

    def __init__(self) -> None:
        self.key: dict[Loc, _Mark] = {}
        self.value: dict[Loc, _Mark] = {}

    def find(self, path: Loc, *, on_key: bool) -> _Mark | None:
        """The key's position (``on_key``) or the value's; for a path not in the file (a
        missing key), the position of the nearest enclosing key."""
        path = tuple(p if isinstance(p, int) else str(p) for p in path)
        first, second = (self.key, self.value) if on_key else (self.value, self.key)
        if path in first:
            return first[path]
        if path in second:
            return second[path]
        while path:
            path = path[:-1]
            found = self.key.get(path) or self.value.get(path)
            if found is not None:
                return found
        return None


# -- the checks ---------------------------------------------------------------------------------


class _Checker:
    def __init__(self, file: str | None, base_dir: str | None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.marks: _Marks | None = None  # set by the YAML/JSON reader
        self.json_text: str | None = None
        """A JSON file's text whose positions are read when a finding first needs one."""
        self.found: list[_Found] = []
        self.config: GuardConfig | None = None
        self.data: Any = None

    def add(self, issue: Issue, mark: _Mark | None = None) -> None:
        self.found.append(_Found(issue, CODES.get(issue.code, "error"), mark))

    def run(self, data: Any, *, warnings: bool) -> CheckReport:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.add(Issue((), "the config must be a mapping of keys to values", "not-a-mapping"))
            return self.report()
        env: list[Issue] = []
        try:
            data = substitute_env(data, (), env)
        except TooLarge as exc:
            self.found = [f for f in self.found if f.issue.code == "duplicate-key"]
            self.add(Issue(exc.path, exc.message, "too-large"))
            return self.report()
        self.data = data
        for issue in env:
            self.add(issue)
        for issue in _unstorable(data, ()):
            self.add(issue)
        self._validate(data)
        sections = {k: data.get(k) for k in ("identities", "tools", "intents")}
        identities, tools, intents = (
            v if isinstance(v, Mapping) else {} for v in sections.values()
        )
        for issue in reference_problems(identities, tools, intents):
            self.add(issue)
        if warnings:
            for issue in _Warnings(identities, tools, intents).run():
                self.add(issue)
        return self.report()

    def _validate(self, data: Mapping[str, Any]) -> None:
        data = dict(data)
        if self.base_dir is not None and "base_dir" not in data:
            data["base_dir"] = self.base_dir
        try:
            self.config = GuardConfig.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                ctx_err = err.get("ctx", {}).get("error")
                loc, on_key = _clean_loc(err["loc"])
                if isinstance(ctx_err, ConfigProblems):
                    if ctx_err.references:  # found on the raw data, with the rest
                        continue
                    for p in ctx_err.problems:
                        self.add(p._replace(path=(*loc, *p.path)) if ctx_err.relative else p)
                    continue
                msg, code = err["msg"], "invalid"
                if err["type"] == "extra_forbidden":
                    msg, code, on_key = (
                        "unknown key; remove it or check its spelling",
                        "unknown-key",
                        True,
                    )
                    near = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
                    if near:
                        msg = f"unknown key (did you mean {near[0]!r}?); remove it or fix it"
                elif err["type"] == "missing":
                    msg, code = f"{loc[-1]} is required here; add it", "missing"
                elif msg.startswith("Value error, "):
                    msg = msg[len("Value error, ") :]
                self.add(Issue(loc, msg, code, on_key))

    def report(self) -> CheckReport:
        found = self.found
        env_paths = {f.issue.path for f in found if f.issue.code == "env-unset"}
        error_paths = {f.issue.path for f in found if f.severity == "error"}
        kept: list[_Found] = []
        seen: set[tuple[str, Loc, str]] = set()
        for f in found:
            p = f.issue.path
            prefixes = {p[:n] for n in range(len(p) + 1)}
            if f.issue.code != "env-unset" and prefixes & env_paths:
                continue  # "" in place of an unset variable would only add noise
            if f.severity == "warning" and prefixes & error_paths:
                continue
            key = (f.issue.code, p, f.issue.message)
            if f.issue.code == "placeholder-typo":
                key = (f.issue.code, p, "")
            if key in seen:
                continue
            seen.add(key)
            kept.append(f)
        findings = [self._finding(f) for f in kept]
        if any(f.line is not None for f in findings):
            order = {id(f): i for i, f in enumerate(findings)}
            findings.sort(key=lambda f: (f.line is None, f.line or 0, f.col or 0, order[id(f)]))
        data = self.data if isinstance(self.data, Mapping) else {}
        counts = {
            k: len(data[k]) if isinstance(data.get(k), Mapping) else 0
            for k in ("identities", "tools", "intents")
        }
        identities = data.get("identities")
        disabled = tuple(
            sorted(
                str(name)
                for name, ident in (identities.items() if isinstance(identities, Mapping) else ())
                if isinstance(ident, Mapping) and ident.get("disabled") is True
            )
        )
        errors = any(f.severity == "error" for f in findings)
        return CheckReport(
            self.file, tuple(findings), None if errors else self.config, counts, disabled
        )

    def _finding(self, f: _Found) -> Finding:
        mark = f.mark
        if mark is None and self.json_text is not None:
            text, self.json_text = self.json_text, None
            scratch = _Checker(self.file, self.base_dir)  # its positions only: no key is twice
            _json_marks(text, scratch)
            self.marks = scratch.marks
        if mark is None and self.marks is not None:
            mark = self.marks.find(f.issue.path, on_key=f.issue.on_key)
        return Finding(
            f.severity,
            f.issue.code,
            format_path(f.issue.path),
            f.issue.message,
            self.file,
            mark[0] if mark else None,
            mark[1] if mark else None,
        )


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[Loc, bool]:
    """A pydantic error location without its validator entries; whether it names a dict key."""
    out: list[str | int] = []
    on_key = False
    for part in loc:
        if part == "[key]":
            on_key = True
        elif isinstance(part, str) and (
            part.startswith("function-") or ("[" in part and "(" in part)
        ):
            continue
        else:
            out.append(part)
    return tuple(out), on_key


def _fields_at(loc: Loc) -> list[str]:
    """The keys the model at ``loc[:-1]`` accepts (for "did you mean ...?")."""
    model: type[BaseModel] = GuardConfig
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return []
        ann: Any = field.annotation
        args = typing.get_args(ann)
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            ann = next((a for a in args if a is not type(None)), None)
            args = typing.get_args(ann)
        if typing.get_origin(ann) is dict and args:
            if not parts:
                return []
            parts.pop(0)
            ann = args[1]
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return [name for name in model.model_fields if name != "base_dir"]


# -- warnings -----------------------------------------------------------------------------------


def _allow(value: Any) -> dict[str, list[tuple[int, str]]]:
    """An ``allow:`` mapping's well-formed operations and patterns."""
    out: dict[str, list[tuple[int, str]]] = {}
    if isinstance(value, Mapping):
        for op, patterns in value.items():
            if isinstance(op, str) and OPERATION_NAME.match(op) and isinstance(patterns, list):
                out[op] = [(i, p) for i, p in enumerate(patterns) if isinstance(p, str) and p]
    return out


def _covered(pattern: str) -> str:
    """A pattern in the form :func:`pattern_covers` reads: a placeholder becomes one literal
    token (bound to the same value wherever the same name appears), ``*`` stays a wildcard."""
    return PLACEHOLDER.sub(lambda m: f"\x00\x02{m.group(1)}\x03\x01", pattern)


def _glob(pattern: str) -> list[str | None]:
    """A pattern as symbols for :func:`_intersect`; a placeholder (any value) is a wildcard."""
    out: list[str | None] = []
    for part in re.split(f"({_PLACEHOLDER_ANY}|\\*)", pattern):
        if part == "*" or PLACEHOLDER.fullmatch(part):
            out.append(None)
        else:
            out.extend(part)
    return out


_PLACEHOLDER_ANY = PLACEHOLDER.pattern.replace("(", "(?:", 1)
"""The placeholder pattern without its capturing group (for :func:`re.split`)."""


def _intersect(a: list[str | None], b: list[str | None]) -> bool:
    """True if some resource matches both globs (``None`` is ``*``)."""
    todo = [(0, 0)]
    seen: set[tuple[int, int]] = set()
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] is None:
            todo.append((i + 1, j))
            if j < len(b):
                todo.append((i, j + 1))
        if j < len(b) and b[j] is None:
            todo.append((i, j + 1))
            if i < len(a):
                todo.append((i + 1, j))
        if i < len(a) and j < len(b) and a[i] is not None and a[i] == b[j]:
            todo.append((i + 1, j + 1))
    return False


def _near(a: str, b: str) -> bool:
    """Placeholder names that differ by one character (or only by case and ``_``)."""
    if a == b:
        return False
    if a.replace("_", "").lower() == b.replace("_", "").lower():
        return True
    if min(len(a), len(b)) < 3 or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


_MAX_WORK = 2_000_000
"""Comparing an intent's patterns with its identity's ceiling takes (length x length) steps per
pair; past this many steps in one check the comparison stops (a hand-written config needs a
few thousand), so that a 1 MiB file of long patterns cannot keep the check busy for minutes."""
_MAX_PLACEHOLDERS = 200
"""Placeholder names of one task compared pairwise for typos (the first 200)."""


class _Warnings:
    """What loads but cannot take effect, found on the raw (substituted) data; parts with
    the wrong shape are skipped (their errors are reported already)."""

    def __init__(
        self, identities: Mapping[Any, Any], tools: Mapping[Any, Any], intents: Mapping[Any, Any]
    ) -> None:
        self.identities = {str(k): v for k, v in identities.items() if isinstance(v, Mapping)}
        self.tools: dict[str, str | None] = {}
        for name, rule in tools.items():
            op = rule.get("operation") if isinstance(rule, Mapping) else None
            ok = isinstance(op, str) and OPERATION_NAME.match(op)
            self.tools[str(name)] = op if ok else None
        self.intents = {str(k): v for k, v in intents.items() if isinstance(v, Mapping)}
        self.operations = {op for op in self.tools.values() if op}
        self.issues: list[Issue] = []
        self.work = _MAX_WORK

    def warn(self, path: Loc, message: str, code: str, *, on_key: bool = False) -> None:
        self.issues.append(Issue(path, message, code, on_key))

    def run(self) -> list[Issue]:
        listed = {
            t
            for intent in self.intents.values()
            if isinstance(intent.get("tools"), list)
            for t in intent["tools"]
            if isinstance(t, str)
        }
        for name, ident in self.identities.items():
            if ident.get("disabled") is True:
                self.warn(
                    ("identities", name, "disabled"),
                    f"identity {name} is disabled by the config (identities.{name}.disabled: "
                    "true): its tasks are refused",
                    "disabled-identity",
                )
            if ident.get("mode") == "shadow":
                self.warn(
                    ("identities", name, "mode"),
                    f"identity {name} is in shadow mode: calls of its intents that the policy "
                    "or a budget refuses still run (recorded as would_deny); set mode: enforce "
                    "once `toolguard audit replay` shows no surprise",
                    "shadow-mode",
                )
            for op in _allow(ident.get("allow")):
                self._operation(("identities", name, "allow", op), op)
        for name in self.tools:
            if name not in listed:
                self.warn(
                    ("tools", name),
                    f"tool {name!r} is not listed by any intent, so every call of it is denied; "
                    "list it under an intent's tools: or remove it",
                    "unused-tool",
                    on_key=True,
                )
        for name, intent in self.intents.items():
            self._intent(name, intent)
        return self.issues

    def _operation(self, path: Loc, op: str) -> bool:
        """Warn about an operation no tool performs; True if some tool does."""
        if op in self.operations or not self.operations:
            return True
        near = difflib.get_close_matches(op, sorted(self.operations), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        self.warn(
            path,
            f"no tool performs the operation {op!r}{hint}, so this rule never applies; tools "
            f"perform {', '.join(sorted(self.operations))}",
            "unused-operation",
            on_key=True,
        )
        return False

    def _intent(self, name: str, intent: Mapping[str, Any]) -> None:
        where: Loc = ("intents", name)
        if intent.get("mode") == "shadow":
            self.warn(
                (*where, "mode"),
                f"intent {name} is in shadow mode: calls that the policy or a budget refuses "
                "still run (recorded as would_deny); set mode: enforce once `toolguard audit "
                "replay` shows no surprise",
                "shadow-mode",
            )
        listed = intent.get("tools")
        tools: list[Any] = listed if isinstance(listed, list) else []
        performs = {t: self.tools[t] for t in tools if isinstance(t, str) and self.tools.get(t)}
        ops = set(performs.values())
        allow = _allow(intent.get("allow"))
        identity_name = intent.get("identity")
        identity = self.identities.get(identity_name) if isinstance(identity_name, str) else None
        ceiling = _allow(identity.get("allow")) if identity is not None else None
        shown = ", ".join(f"{t}: {op}" for t, op in performs.items()) or "none"
        for op, patterns in allow.items():
            path: Loc = (*where, "allow", op)
            if not self._operation(path, op):
                continue
            if op not in ops:
                self.warn(
                    path,
                    f"none of the intent's tools performs {op} ({shown}), so this rule never "
                    "applies; add a tool that does, or remove the rule",
                    "unreachable",
                    on_key=True,
                )
                continue
            if ceiling is None:
                continue
            self._ceiling(path, str(identity_name), op, patterns, ceiling.get(op, []))
        budget = intent.get("budget")
        per_op = budget.get("per_operation") if isinstance(budget, Mapping) else None
        for op in per_op if isinstance(per_op, Mapping) else ():
            path = (*where, "budget", "per_operation", op)
            if isinstance(op, str) and self._operation(path, op) and op not in ops:
                self.warn(
                    path,
                    f"none of the intent's tools performs {op} ({shown}), so this budget never "
                    "applies",
                    "unreachable",
                    on_key=True,
                )
        for i, tool in enumerate(tools):
            tool_op = self.tools.get(tool) if isinstance(tool, str) else None
            if tool_op and not allow.get(tool_op):
                self.warn(
                    (*where, "tools", i),
                    f"tool {tool!r} performs {tool_op}, which this intent does not allow: every "
                    f"call of it is denied; allow {tool_op} under intents.{name}.allow or remove "
                    "the tool",
                    "unreachable",
                )
        self._placeholders(name, intent, str(identity_name), identity)

    def _ceiling(
        self,
        path: Loc,
        identity: str,
        op: str,
        patterns: list[tuple[int, str]],
        ceiling: list[tuple[int, str]],
    ) -> None:
        if not ceiling:
            self.warn(
                path,
                f"identity {identity!r} allows no {op} (none under identities.{identity}.allow),"
                " so this rule never allows a call; allow it there, or remove it here",
                "wider-than-identity",
                on_key=True,
            )
            return
        allowed = ", ".join(repr(p) for _, p in ceiling)
        for i, pattern in patterns:
            self.work -= sum((len(c) + 1) * (len(pattern) + 1) for _, c in ceiling) * 2
            if self.work < 0:  # quadratic: a huge file could keep the check busy for minutes
                return
            if any(pattern_covers(_covered(c), _covered(pattern)) for _, c in ceiling):
                continue
            if any(_intersect(_glob(c), _glob(pattern)) for _, c in ceiling):
                what = "is wider than"
                then = "calls outside that are denied"
            else:
                what = "is outside everything"
                then = "this rule never allows a call"
            self.warn(
                (*path, i),
                f"{pattern!r} {what} identity {identity!r} allows for {op} ({allowed}); {then}",
                "wider-than-identity",
            )

    def _placeholders(
        self, name: str, intent: Mapping[str, Any], identity_name: str, identity: Any
    ) -> None:
        """``{jobid}`` beside ``{job_id}`` in what one task binds: a task needs both."""
        uses: dict[str, list[Loc]] = {}
        texts: list[tuple[Loc, str]] = []
        for op, patterns in _allow(intent.get("allow")).items():
            texts += [(("intents", name, "allow", op, i), p) for i, p in patterns]
        if isinstance(intent.get("purpose"), str):
            texts.append((("intents", name, "purpose"), intent["purpose"]))
        if isinstance(identity, Mapping):
            for op, patterns in _allow(identity.get("allow")).items():
                texts += [(("identities", identity_name, "allow", op, i), p) for i, p in patterns]
        for path, text in texts:
            for placeholder in PLACEHOLDER.findall(text):
                uses.setdefault(placeholder, []).append(path)
        names = list(uses)[:_MAX_PLACEHOLDERS]  # a real task has a handful
        for n, a in enumerate(names):
            for b in names[n + 1 :]:
                if not _near(a, b):
                    continue
                # the rarer spelling is the slip (the later one when both are as common)
                odd, usual = (a, b) if len(uses[a]) < len(uses[b]) else (b, a)
                self.warn(
                    uses[odd][0],
                    f"placeholder {{{odd}}} differs by one character from {{{usual}}} (at "
                    f"{format_path(uses[usual][0])}); a task of intent {name!r} would need both "
                    "parameters: use one name",
                    "placeholder-typo",
                )
