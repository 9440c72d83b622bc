"""The YAML walk behind :func:`guest_agent.config.parse_config`.

It reads the node tree from ``yaml.compose`` so every problem names the
file, the line and what to write instead, collects all problems of a file,
and builds the validated dataclasses of :mod:`guest_agent.config`.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Optional

import yaml

from guest_agent.config import (
    CHECK_KEYS,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_NOTIFY_SOCKET,
    DEFAULT_PORT,
    KINDS,
    MATCH_KINDS,
    MAX_HEARTBEAT_INTERVAL,
    MAX_RESCAN_INTERVAL,
    MIN_HEARTBEAT_INTERVAL,
    MIN_RESCAN_INTERVAL,
    TOP_KEYS,
    AgentConfig,
    CheckConfig,
    ConfigError,
    _abs_path,
    _number_in,
    accepted_keys,
    check_grace,
    check_min_count,
    check_name,
    check_target,
    kind_keys_text,
    probe_problem,
)
from guest_agent.probes import options as probe
from guest_agent.probes.options import PROBE_KINDS
from iim_protocol.messages import MAX_CHECKS

_TOP_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "port": lambda v: _abs_path("port", v, DEFAULT_PORT),
    "control_socket": lambda v: _abs_path("control_socket", v, DEFAULT_CONTROL_SOCKET),
    "notify_socket": lambda v: _abs_path("notify_socket", v, DEFAULT_NOTIFY_SOCKET),
    "heartbeat_interval": lambda v: _number_in(
        "heartbeat_interval", v, MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL, "1s"
    ),
    "rescan_interval": lambda v: _number_in(
        "rescan_interval", v, MIN_RESCAN_INTERVAL, MAX_RESCAN_INTERVAL, "5s"
    ),
}



class Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: Optional[yaml.Node], path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        where = f"{path}: " if path else ""
        self.problems.append(f"{self.source}:{line}: {where}{message}")

    def value(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return _NOT_SCALAR
        return self._constructor.construct_object(node, deep=True)

    def tabs(self, text: str) -> list[str]:
        """A problem for each line indented with a tab, which YAML does not allow."""
        out = []
        for number, line in enumerate(text.splitlines(), 1):
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            if "\t" in indent and line.strip():
                out.append(f"{self.source}:{number}: a tab in the indentation: YAML is "
                           "indented with spaces only; indent with spaces")
        return out

    def parse(self, text: str) -> AgentConfig:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            tabs = self.tabs(text)
            if tabs:
                raise ConfigError(tabs) from None
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            what = f"{exc.problem or exc.context}"
            if "'\\t'" in what:
                what = "a tab where YAML allows only spaces; indent and separate with spaces"
            raise ConfigError([f"{self.source}:{line}: not valid YAML: {what}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{self.source}:1: not valid YAML: {exc}"]) from None
        fields: dict[str, Any] = {}
        if root is not None and not (isinstance(root, yaml.ScalarNode) and root.value == ""):
            if not isinstance(root, yaml.MappingNode):
                self.problem(
                    root, "", f"must be a mapping of settings, e.g. `port: {DEFAULT_PORT}`"
                )
            else:
                fields = self.mapping(root, "", TOP_KEYS)
        for key, (node, raw) in list(fields.items()):
            if key == "checks":
                fields[key] = self.checks(node)
                continue
            try:
                fields[key] = _TOP_VALIDATORS[key](raw)
            except ValueError as exc:
                self.problem(node, key, str(exc))
        if self.problems:
            raise ConfigError(self.problems)
        return AgentConfig(source=self.source, **fields)

    def mapping(
        self, node: yaml.MappingNode, prefix: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[yaml.Node, Any]]:
        """Return {key: (value node, value)} of known keys; report unknown and repeated keys."""
        out: dict[str, tuple[yaml.Node, Any]] = {}
        for knode, vnode in node.value:
            key = self.value(knode)
            path = f"{prefix}{key}"
            if not isinstance(key, str) or key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean `{close[0]}`? " if close else ""
                self.problem(knode, path, f"unknown key; {hint}allowed keys: {', '.join(allowed)}")
                continue
            if key in out:
                self.problem(knode, path, "given twice; keep one")
                continue
            out[key] = (vnode, self.value(vnode))
        return out

    def checks(self, node: yaml.Node) -> tuple[CheckConfig, ...]:
        if isinstance(node, yaml.ScalarNode) and self.value(node) is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.problem(
                node,
                "checks",
                "must be a list of checks, e.g. `checks: [{name: web, process: nginx}]`",
            )
            return ()
        if len(node.value) > MAX_CHECKS:
            self.problem(node, "checks", f"at most {MAX_CHECKS} checks; remove some")
        out: list[CheckConfig] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(node.value):
            check = self.check(item, f"checks[{i}]")
            if check is None:
                continue
            if check.name in seen:
                self.problem(
                    item,
                    f"checks[{i}].name",
                    f"{check.name!r} is already the name of check {seen[check.name]}; "
                    "names must be unique",
                )
                continue
            seen[check.name] = i
            out.append(check)
        return tuple(out)

    def check(self, node: yaml.Node, path: str) -> Optional[CheckConfig]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, "must be a mapping, e.g. `- {name: web, process: nginx}`")
            return None
        before = len(self.problems)
        fields = self.mapping(node, f"{path}.", CHECK_KEYS)
        kinds = [k for k in KINDS if k in fields]
        kind = kinds[0] if len(kinds) == 1 else ""
        clean: dict[str, Any] = {}
        for key, (vnode, raw) in fields.items():
            if kind and key not in (("name", kind) + accepted_keys(kind)):
                if key not in KINDS:
                    self.problem(vnode, f"{path}.{key}", f"not used by this check: "
                                 f"{kind_keys_text(kind)}; remove `{key}`")
                continue
            try:
                clean[key] = self.field(key, kind, vnode, raw)
            except ValueError as exc:
                self.problem(vnode, f"{path}.{key}", str(exc))
        if "name" not in fields:
            self.problem(node, path, "has no name; add one, e.g. `name: web`")
        if not kind:
            found = " and ".join(kinds) if kinds else "none"
            self.problem(
                node,
                path,
                f"needs exactly one of process, cmdline, pidfile, http, tcp, exec, heartbeat "
                f"or file (found {found}), e.g. `process: nginx` or "
                "`http: http://127.0.0.1:8080/healthz`",
            )
        if kind == "pidfile" and clean.get("min_count", 1) != 1:
            self.problem(
                fields["min_count"][0],
                f"{path}.min_count",
                "a pidfile names one process: remove it or write `min_count: 1`",
            )
        if kind in PROBE_KINDS and len(self.problems) == before:
            problem = probe_problem(kind, clean.get("period", probe.DEFAULT_PERIOD),
                                    clean.get("timeout", probe.default_timeout(kind)),
                                    clean.get("max_age", 0.0))
            if problem:
                self.problem(node, path, problem)
        if len(self.problems) > before:
            return None
        target = clean[kind]
        if kind == "exec":
            clean["argv"], target = target, " ".join(target)
        del clean[kind]
        return CheckConfig(kind=kind, target=target, **clean)

    def field(self, key: str, kind: str, vnode: yaml.Node, raw: Any) -> Any:
        """The clean value of one key of a check, or ValueError."""
        if key == "exec" or key == "status":
            raw = self.plain(vnode)
        if key == "name":
            return check_name(raw)
        if key in MATCH_KINDS:
            return check_target(key, raw)
        if key in PROBE_KINDS:
            return probe.TARGET_VALIDATORS[key](raw)
        if key == "min_count":
            return check_min_count(raw)
        if key == "grace":
            return check_grace(raw)
        if key == "timeout":
            return probe.check_timeout(raw, kind)
        return probe.KEY_VALIDATORS[key](raw)

    def plain(self, node: yaml.Node) -> Any:
        """A scalar, or a list of scalars (exec's argv, http's status codes)."""
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item) for item in node.value]
        return self.value(node)


class _NotScalar:
    def __repr__(self) -> str:
        return "<not a scalar>"


_NOT_SCALAR = _NotScalar()
