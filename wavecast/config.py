"""Start-up checks of a composed Hydra config, and its printing / saving.

Two layers of checking, both before anything heavy is built:

* `validate_targets`: every node with a `_target_` is checked against the signature of the class
  or function it names: unknown keys (with a "did you mean"), missing required arguments and
  wrong scalar types fail with the full dotted key. The signatures are the schema, so configs
  and code cannot drift apart. Keys that a target passes on through ``**kwargs`` are checked
  against the signature of what receives them (`_KWARGS_RECEIVERS`: ``WandbLogger`` ->
  ``wandb.init``, ...). Annotations that do not resolve only skip the type check of their own
  parameter. What cannot be checked (no signature, ``**kwargs`` going nowhere known) is logged
  as a warning naming the key.
* `validate_run_keys`: the top-level keys of train.yaml / eval.yaml against a dataclass schema
  (OmegaConf structured config, which names the full key on a type error).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import importlib
import inspect
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

log = logging.getLogger(__name__)

#: Where a target's ``**kwargs`` go, by the qualified name of the class (or a base class): the
#: receivers to try in order (the first that imports is the one used) and the parameters the
#: target fills in itself (not the config's to give).
_KWARGS_RECEIVERS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "lightning.pytorch.loggers.wandb.WandbLogger": (("wandb.init",), frozenset()),
    "lightning.fabric.loggers.tensorboard.TensorBoardLogger": (
        ("torch.utils.tensorboard.SummaryWriter", "tensorboardX.SummaryWriter"),
        frozenset({"log_dir"}),
    ),
    "lightning.pytorch.strategies.ddp.DDPStrategy": (
        ("torch.nn.parallel.DistributedDataParallel",),
        frozenset({"module", "device_ids"}),
    ),
    "lightning.pytorch.strategies.fsdp.FSDPStrategy": (
        ("torch.distributed.fsdp.FullyShardedDataParallel",),
        frozenset({"module"}),
    ),
    "lightning.pytorch.callbacks.weight_averaging.WeightAveraging": (
        ("torch.optim.swa_utils.AveragedModel",),
        frozenset({"model", "device", "use_buffers"}),
    ),
}


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
    """Parameter annotations of ``obj`` (its ``__init__`` for a class), resolved one by one:
    a forward reference that does not resolve (e.g. a name imported only for type checkers)
    leaves out that parameter alone, not the whole signature."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(fn)
    except Exception:
        pass
    sig = _signature(fn)
    if sig is None:
        return {}
    module = inspect.getmodule(inspect.unwrap(fn))
    globalns = dict(vars(module)) if module is not None else {}
    hints: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        ann = p.annotation
        if ann is inspect.Parameter.empty:
            continue
        if isinstance(ann, str):
            try:
                ann = eval(ann, globalns, dict(vars(typing)))  # noqa: S307 (library annotations)
            except Exception:
                continue
        hints[name] = ann
    return hints


def _named_params(sig: inspect.Signature) -> tuple[dict[str, inspect.Parameter], bool]:
    """(the named parameters, whether it takes ``**kwargs``)."""
    params = sig.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        n: p
        for n, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and n != "self"
    }
    return named, takes_kwargs


def _kwargs_receiver(target: Any) -> tuple[str, Any, frozenset[str]] | None | bool:
    """The callable that receives ``target``'s ``**kwargs``: ``(path, object, filled)``; None when
    unknown; False when known but none of its candidates imports."""
    for cls in inspect.getmro(target) if inspect.isclass(target) else (target,):
        entry = _KWARGS_RECEIVERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if entry is None:
            continue
        paths, filled = entry
        for path in paths:
            module, _, attr = path.rpartition(".")
            try:
                return path, getattr(importlib.import_module(module), attr), filled
            except Exception:  # ImportError and what a broken optional package raises
                continue
        return False
    return None


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


def _check_types(node: dict, keys: list[str], hints: dict[str, Any], key: str, owner: str) -> None:
    for k in keys:
        if k in hints and _matches(node[k], hints[k]) is False:
            raise ConfigError(
                f"{key}.{k}: expected {hints[k]}, got {type(node[k]).__name__} {node[k]!r} "
                f"(for {owner})"
            )


def _check_forwarded(node: dict, extra: list[str], target: Any, own: list[str], key: str) -> None:
    """``extra``: keys beyond ``target``'s named parameters ``own``, which it passes on through
    ``**kwargs``."""
    name = node["_target_"]
    receiver = _kwargs_receiver(target)
    if not receiver:
        why = "is not installed" if receiver is False else "is not known"
        log.warning(
            "config check: %s: %s takes **kwargs and what receives them %s; key(s) %s not checked",
            key,
            name,
            why,
            extra,
        )
        return
    path, obj, filled = receiver
    sig = _signature(obj)
    if sig is None:
        log.warning(
            "config check: %s: cannot read the signature of %s (receives the **kwargs of %s); "
            "key(s) %s not checked",
            key,
            path,
            name,
            extra,
        )
        return
    named, takes_kwargs = _named_params(sig)
    accepted = {n: p for n, p in named.items() if n not in filled}
    for k in extra:
        if k not in accepted and not takes_kwargs:
            close = difflib.get_close_matches(k, [*own, *accepted], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{key}.{k}: unknown key for {name}, nor accepted by {path}, which receives its "
                f"other keyword arguments{hint}; accepted: {sorted(own)} and {sorted(accepted)}"
            )
    if takes_kwargs:
        unchecked = [k for k in extra if k not in accepted]
        if unchecked:
            log.warning(
                "config check: %s: %s passes them on to %s, which takes **kwargs too; key(s) %s "
                "not checked",
                key,
                name,
                path,
                unchecked,
            )
    _check_types(node, [k for k in extra if k in accepted], _type_hints(obj), key, path)


def _check_target_node(node: dict, key: str) -> None:
    target = _resolve_target(node["_target_"], key)
    sig = _signature(target)
    if sig is None:
        log.warning(
            "config check: %s: cannot read the signature of %s; its keys are not checked",
            key,
            node["_target_"],
        )
        return
    named, takes_kwargs = _named_params(sig)
    given = [k for k in node if k not in _HYDRA_KEYS]
    for k in given:
        if k not in named and not takes_kwargs:
            close = difflib.get_close_matches(k, named, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{key}.{k}: unknown key for {node['_target_']}{hint}; accepted: {sorted(named)}"
            )
    extra = [k for k in given if k not in named]
    if extra:
        _check_forwarded(node, extra, target, list(named), key)
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
    _check_types(node, [k for k in given if k in named], _type_hints(target), key, node["_target_"])


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


def override_hint(config_name: str, overrides: list[str], config_dir: str | Path) -> str | None:
    """A "did you mean" for a command-line override of a key the config does not have.

    Hydra refuses ``data.batch_szie=4`` with "Key 'batch_szie' is not in struct" and suggests
    ``+data.batch_szie`` (adding the typo). This composes the config again without that override
    and names the closest existing key. None when composing works or the failure is another one.
    """
    import re

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def _compose(ovr: list[str]) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=ovr)

    try:
        _compose(overrides)
        return None
    except Exception as e:  # noqa: BLE001 - any composition failure: look for a bad key
        text = f"{e} {e.__cause__ or ''}"
    match = re.search(r"Could not override '([^']+)'", text)
    if not match or "not in struct" not in text:
        return None
    key = match.group(1)
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        cfg = _compose(rest)
    except Exception:  # noqa: BLE001 - another override is broken too: no hint
        return None
    # The first component of the key that does not exist, and the node it was looked up in.
    node, parts, i = cfg, key.split("."), 0
    while i < len(parts) - 1 and isinstance(node, DictConfig) and parts[i] in node:
        node, i = node[parts[i]], i + 1
    where = ".".join(parts[:i])
    if not isinstance(node, DictConfig):
        return f"{key}: '{where}' is a value, not a config node"
    keys = [str(k) for k in node]
    close = difflib.get_close_matches(parts[i], keys, n=1)
    prefix = f"{where}." if where else ""
    if close:
        return f"{key}: no such key; did you mean '{prefix}{close[0]}'?"
    return f"{key}: no such key; {where or 'the top level'} has {sorted(keys)}"
