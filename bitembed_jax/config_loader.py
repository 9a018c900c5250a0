"""Load a config file (``get_config()`` returning a ConfigDict) and apply ``--config.a.b=value`` overrides."""
import ast
import importlib.util
import os
import sys

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """The ConfigDict of a configs/*.py file's ``get_config()``; a file that is not one is a ValueError naming
    it (and the line of a syntax error)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} not found")
    if os.path.isdir(path) or not path.endswith(".py"):
        raise ValueError(f"--config {path}: not a config file; give a Python file with a get_config() function "
                         f"(e.g. configs/quickstart.py)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:  # configs import each other as ``configs.base``
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_bitembed_config_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        if not hasattr(mod, "get_config"):
            raise ValueError(f"--config {path} has no get_config() function")
        cfg = mod.get_config()
    except SyntaxError as e:
        raise ValueError(f"--config {e.filename or path}:{e.lineno}: syntax error: {e.msg}") from None
    except ValueError:
        raise
    except Exception as e:  # the file's own code failed: name the file, not our loader's frames
        raise ValueError(f"--config {path}: {type(e).__name__} while loading it: {e}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ValueError(f"--config {path}: get_config() returned a {type(cfg).__name__}, not an "
                         f"ml_collections.ConfigDict")
    return cfg


def _parse(value: str, current):
    if isinstance(current, str):
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    if isinstance(current, bool) and isinstance(parsed, str):
        low = parsed.lower()
        if low in ("true", "false"):
            return low == "true"
    if isinstance(current, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        return float(parsed)
    if isinstance(current, (list, tuple)):
        if isinstance(parsed, str):
            return [v for v in parsed.split(",") if v]
        return list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
    return parsed


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """``overrides``: ["--config.train.batch_size=64", ...]; unknown keys and wrong types are errors naming the key."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r}: overrides look like --config.train.batch_size=64")
        key, value = item[len("--config."):].split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
                raise KeyError(f"config key config.{key} does not exist")
            node = node[p]
        if parts[-1] not in node:
            raise KeyError(f"config key config.{key} does not exist")
        current = node[parts[-1]]
        new = _parse(value, current)
        try:
            node[parts[-1]] = new
        except TypeError as e:
            raise ValueError(f"config.{key}: cannot set {value!r} ({type(new).__name__}) on a "
                             f"{type(current).__name__} field") from e
    return cfg


ABSENT = "<absent>"


def recorded_diff(saved: dict, now: dict, *, added: dict | None = None,
                  resumable: tuple[str, ...] = ()) -> list[tuple[str, object, object]]:
    """(key, saved value, value now) for each flat key whose value differs between a recorded run and this one.

    ``added``: keys introduced after runs were recorded, with the value that behaves as before they existed
    (a record without the key matches that value). Keys starting with a ``resumable`` prefix may differ.
    """
    saved = {**{k: v for k, v in (added or {}).items() if k in now}, **saved}
    return [(k, saved.get(k, ABSENT), now.get(k, ABSENT)) for k in sorted(set(saved) | set(now))
            if saved.get(k, ABSENT) != now.get(k, ABSENT) and not k.startswith(resumable)]
