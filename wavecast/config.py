"""Start-up checks of a composed Hydra config, and its printing / saving.

Two layers of checking, both before anything heavy is built:

* `validate_targets`: every node with a `_target_` is checked against the signature of the class
  or function it names: unknown keys (with a "did you mean"), missing required arguments and
  wrong scalar types fail with the full dotted key. The signatures are the schema, so configs
  and code cannot drift apart.
* `validate_run_keys`: the top-level keys of train.yaml / eval.yaml against a dataclass schema
  (OmegaConf structured config, which names the full key on a type error).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(ValueError):
    """A config value is wrong; the message names the full key."""


@dataclasses.dataclass
class RunSchema:
    """Top-level keys of train.yaml / eval.yaml (the groups are checked by `validate_targets`)."""

    task_name: str = "train"
    run_name: str = "default"
    tags: list[str] = dataclasses.field(default_factory=list)
    train: bool = True
    test: bool = False
    ckpt_path: str | None = None
    seed: int | None = None
    deterministic: bool = False
    optimized_metric: str | None = None
    optimized_mode: str = "min"
    compile: bool = False
    split: str = "test"
    analyses: list[str] = dataclasses.field(default_factory=list)
    metrics_file: str = "metrics.json"


_GROUP_KEYS = {"data", "model", "callbacks", "logger", "trainer", "paths", "hydra", "extras"}


def validate_run_keys(cfg: DictConfig) -> None:
    """Type-check the top-level scalar keys against `RunSchema`."""
    names = {f.name for f in dataclasses.fields(RunSchema)}
    unknown = [k for k in cfg if k not in names and k not in _GROUP_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown top-level config key(s) {unknown}; known: {sorted(names | _GROUP_KEYS)}"
        )
    for k in names:
        # `k in cfg` is False for a ??? value in OmegaConf, hence keys().
        if k in cfg.keys() and OmegaConf.is_missing(cfg, k):  # noqa: SIM118
            hint = " (a checkpoint file, or last)" if k == "ckpt_path" else ""
            raise ConfigError(f"{k} is required: pass {k}=...{hint}")
    present = {k: cfg[k] for k in names if k in cfg}
    try:
        OmegaConf.merge(OmegaConf.structured(RunSchema), present)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key '{e.full_key}': {e.msg}") from None


def _resolve_target(path: str, key: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as e:  # ImportError, AttributeError, ... all mean "no such target"
        raise ConfigError(f"{key}._target_: cannot import '{path}' ({e})") from None


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _type_hints(obj: Any) -> dict[str, Any]:
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # Unresolvable forward references: check only what we can.
        return {}


def _matches(value: Any, ann: Any) -> bool | None:
    """True / False when the annotation decides, None when it cannot be checked simply."""
    if ann is Any or ann is inspect.Parameter.empty:
        return None
    if isinstance(value, dict) and "_target_" in value:
        return None  # an object built by Hydra: not a plain value
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        results = [_matches(value, a) for a in typing.get_args(ann)]
        if any(r is True for r in results):
            return True
        return False if all(r is False for r in results) else None
    if ann is type(None):
        return value is None
    if value is None:
        return False if ann in (bool, int, float, str, list, tuple, dict) else None
    if origin is Literal:
        return value in typing.get_args(ann)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    seq = (list, tuple, collections.abc.Sequence)
    if ann in (list, tuple) or origin in seq:
        return isinstance(value, (list, tuple))
    if ann is dict or origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return None


def _check_target_node(node: dict, key: str) -> None:
    target = _resolve_target(node["_target_"], key)
    sig = _signature(target)
    if sig is None:
        return
    params = sig.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        n: p
        for n, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and n != "self"
    }
    given = [k for k in node if k not in _HYDRA_KEYS]
    for k in given:
        if k not in named and not takes_kwargs:
            close = difflib.get_close_matches(k, named, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{key}.{k}: unknown key for {node['_target_']}{hint}; accepted: {sorted(named)}"
            )
    if not node.get("_partial_", False):
        n_args = len(node.get("_args_", []))
        positional = [
            n
            for n, p in named.items()
            if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.KEYWORD_ONLY
        ]
        required = [n for n, p in named.items() if p.default is inspect.Parameter.empty]
        missing = [n for n in required if n not in node and n not in positional[:n_args]]
        if missing:
            raise ConfigError(f"{key}: missing required value(s) {missing} for {node['_target_']}")
    hints = _type_hints(target)
    for k in given:
        if k in hints and _matches(node[k], hints[k]) is False:
            raise ConfigError(
                f"{key}.{k}: expected {hints[k]}, got {type(node[k]).__name__} {node[k]!r} "
                f"(for {node['_target_']})"
            )


def _walk(node: Any, key: str) -> None:
    if isinstance(node, dict):
        if "_target_" in node:
            _check_target_node(node, key)
        for k, v in node.items():
            if k not in _HYDRA_KEYS:
                _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{key}[{i}]")


def validate_targets(
    cfg: DictConfig, groups: tuple[str, ...] = ("data", "model", "callbacks", "logger", "trainer")
) -> None:
    """Check every `_target_` node of the given groups against its signature."""
    for group in groups:
        if group not in cfg or cfg[group] is None:
            continue
        for k in cfg[group] if isinstance(cfg[group], DictConfig) else []:
            if OmegaConf.is_missing(cfg[group], k):
                raise ConfigError(f"{group}.{k}: required value is missing (???)")
        try:
            container = OmegaConf.to_container(cfg[group], resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{group}: cannot resolve '{e.full_key}': {e.msg}") from None
        _walk(container, group)


def validate_config(cfg: DictConfig) -> None:
    """All start-up checks that need no object to be built."""
    validate_run_keys(cfg)
    validate_targets(cfg)


def print_config_tree(
    cfg: DictConfig,
    save_to: str | Path | None = None,
    order: tuple[str, ...] = ("data", "model", "callbacks", "logger", "trainer", "paths"),
) -> None:
    """Print the resolved config as a rich tree (and save it as YAML beside the run)."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order and k != "hydra"]
    for k in keys:
        branch = tree.add(str(k), style="bold")
        node = cfg[k]
        text = (
            OmegaConf.to_yaml(node, resolve=True)
            if isinstance(node, (DictConfig, ListConfig))
            else str(node)
        )
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    rich.print(tree)
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("hydra", None)
        Path(save_to).write_text(OmegaConf.to_yaml(resolved))
