"""Choosing parameters by name: which ones adapt in the inner loop, which ones are frozen.

A pattern is one of
  * a glob over the full parameter name (``layer4.*``, ``*.bias``, ``fc.weight``; ``*`` also
    matches dots), as ``fnmatch`` reads it;
  * a submodule's name without wildcards (``layer4``): all of its parameters;
  * a regular expression, written ``re:<expression>`` and matched against the full name
    (``re:layer[34]\\..*``).
A pattern that matches no parameter is an error: a typo must not silently adapt or freeze
nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from torch import nn

from maml_cli.errors import ConfigError


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


def _check(pattern: object, key: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{key} takes parameter-name patterns (strings), got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"{key}: {pattern!r} is not a valid regular expression ({exc})") from None
    return pattern


def as_patterns(value: object) -> list[str]:
    """A config value as a list of patterns: None is none, one string is one pattern."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def select_names(names: Iterable[str], patterns: Sequence[str], key: str) -> list[str]:
    """The names that match any of ``patterns``, in their order; ``key`` names the config key in
    errors. Every pattern must match at least one name."""
    names = list(names)
    patterns = [_check(p, key) for p in patterns]
    for pattern in patterns:
        if not any(_matches(name, pattern) for name in names):
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            raise ConfigError(f"{key}: pattern {pattern!r} matches no parameter; the parameters are {shown}")
    return [name for name in names if any(_matches(name, p) for p in patterns)]


def freeze_parameters(model: nn.Module, patterns: Sequence[str], key: str = "model.freeze") -> list[str]:
    """Freeze the parameters ``patterns`` name: neither adapted nor meta-learned. Returns them."""
    patterns = as_patterns(patterns)
    if not patterns:
        return []
    frozen = select_names((name for name, _ in model.named_parameters()), patterns, key)
    parameters = dict(model.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen
