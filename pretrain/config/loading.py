"""Loading: ``merge(structured(Config), yaml, dotlist overrides)``, then :func:`validate`.

omegaconf rejects unknown keys and wrong types; every failure becomes a :class:`ConfigError`
whose message is one line naming the key. Also the ways a resolved config leaves the process
(YAML beside a run, a plain dict in checkpoints) and the shared ``--config`` CLI arguments.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf._yaml import get_yaml_loader  # omegaconf is pinned: its loader, minus base 60
from omegaconf.errors import OmegaConfBaseException

from data_prep.atomic import atomic_write_text
from pretrain.config.derived import Derived
from pretrain.config.schema import DEFAULT_CONFIG, REPO_ROOT, Config, ConfigError
from pretrain.config.validation import validate


def _omegaconf_error(err: OmegaConfBaseException, origin: str) -> ConfigError:
    """Turn an omegaconf exception into one line naming the key."""
    key = getattr(err, "full_key", None) or ""
    msg = str(getattr(err, "msg", None) or err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(f"config error ({origin}): {key}: unknown key")
    if "Value '" in msg or "could not be converted" in msg or "Invalid type" in msg:
        value = msg.split("Value '", 1)[1].split("'", 1)[0] if "Value '" in msg else None
        want = ""
        if " to " in msg:
            want = " (expected " + msg.rsplit(" to ", 1)[1].strip().rstrip(".") + ")"
        shown = f" {value!r}" if value is not None else ""
        return ConfigError(f"config error ({origin}): {key}: wrong type{shown}{want}")
    return ConfigError(f"config error ({origin}): {key or '<root>'}: {msg}")


def _sexagesimal_free_loader() -> type:
    """omegaconf's YAML loader without YAML 1.1's base-60 numbers: there ``4:00:00`` is the int
    14400 and ``30:00`` is 1800, so a Slurm time limit typed as H:MM:SS reached sbatch as
    "14400" minutes (10 days). Values with a colon stay strings."""
    base = get_yaml_loader()
    no_colon = "(?=[^:]*$)"

    def plain(tag: str, rx: re.Pattern) -> re.Pattern:
        numeric = tag.endswith((":int", ":float"))
        return re.compile(no_colon + rx.pattern, rx.flags) if numeric else rx

    loader = type("ConfigLoader", (base,), {})
    loader.yaml_implicit_resolvers = {
        first: [(tag, plain(tag, rx)) for tag, rx in resolvers]
        for first, resolvers in base.yaml_implicit_resolvers.items()}
    return loader


_LOADER = _sexagesimal_free_loader()


def parse_yaml(text: str) -> Any:
    """YAML text as omegaconf reads it, except that ``H:MM:SS`` and ``M:SS`` stay strings."""
    return yaml.load(text, Loader=_LOADER)


def read_yaml_mapping(path: Path, what: str = "config") -> DictConfig:
    """A YAML file holding a mapping (empty file: empty mapping), as a DictConfig; one-line
    :class:`ConfigError` when it cannot be read or parsed or is not a mapping."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{what} error: cannot read {path}: {err.strerror or err}") from None
    try:
        values = parse_yaml(text)
    except Exception as err:  # yaml parse errors come in several types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{what} error: {path} is not valid YAML: {first}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{what} error: {path} must hold a mapping at the top level, "
                          f"not a {type(values).__name__}")
    try:
        return OmegaConf.create(values)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, str(path)) from None


def override_tree(item: str) -> DictConfig:
    """One ``key=value`` override as a config tree (what ``OmegaConf.from_dotlist`` makes, with
    :func:`parse_yaml`'s values). A value with `` #`` would lose its end to a YAML comment: an
    unquoted one is refused."""
    if "=" not in item:
        raise ConfigError(f"config error: override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    try:
        parsed = parse_yaml(value)
    except Exception as err:  # YAML errors in the value (e.g. a NUL byte, a bad flow list)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"config error: override {item!r} is not valid YAML: {first}") from None
    comment = re.search(r"\s#", value)
    if comment and _parses_to(value[:comment.start()], parsed):  # the rest was a comment
        raise ConfigError(f"config error: override {item!r}: ' #' starts a YAML comment, which "
                          f"would drop {value[comment.start():].strip()!r}; quote the value")
    tree = OmegaConf.create({})
    try:
        OmegaConf.update(tree, key, parsed)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, f"override {item!r}") from None
    return tree


def _parses_to(text: str, value: Any) -> bool:
    try:
        return parse_yaml(text) == value
    except Exception:  # e.g. the cut fell inside quotes: then the '#' was quoted too
        return False


def load_config(path: Optional[os.PathLike | str] = None, overrides: Sequence[str] = (),
                check: bool = True) -> Config:
    """Load ``path`` (default: the quick-start preset), apply ``key=value`` overrides, validate.

    Raises :class:`ConfigError` with a one-line message on any problem. ``check=False`` checks
    keys and types only, not the cross-field rules (a sweep whose data is not prepared yet).
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    return _build(read_yaml_mapping(path), str(path), overrides, check)


def config_from_dict(values: dict, overrides: Sequence[str] = (), origin: str = "saved config"
                     ) -> Config:
    """Validate a plain dict (e.g. the config stored in a checkpoint), with overrides."""
    return _build(OmegaConf.create(values), origin, overrides)


def _build(from_file: DictConfig, origin: str, overrides: Sequence[str], check: bool = True
           ) -> Config:
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, from_file)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, origin) from None
    for item in overrides:
        tree = override_tree(item)
        try:
            merged = OmegaConf.merge(merged, tree)
        except OmegaConfBaseException as err:
            if not getattr(err, "full_key", None):  # e.g. a section given a scalar: name it
                err.full_key = item.split("=", 1)[0]
            raise _omegaconf_error(err, f"override {item!r}") from None
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, origin) from None
    if cfg.model.tokenizer and not os.path.isabs(cfg.model.tokenizer):
        # Absolute from here on: the run's saved config (and its checkpoints and exports) then
        # find the tokenizer from any working directory.
        cfg.model.tokenizer = os.path.abspath(cfg.model.tokenizer)
    if check:
        validate(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what every run saves next to its outputs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_resolved(cfg: Config, run_dir: os.PathLike | str, derived: Optional[Derived] = None) -> Path:
    """Atomically write ``config.yaml`` (and the derived values as comments) into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg)
    if derived is not None:
        text += "# derived:\n" + "".join(
            f"#   {k}: {v}\n" for k, v in dataclasses.asdict(derived).items())
    return atomic_write_text(run_dir / "config.yaml", text)


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config (for checkpoints and JSON output)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def add_config_args(parser: Any) -> None:
    """Add the shared ``--config`` option and ``key=value`` overrides to an argparse parser."""
    parser.add_argument("--config", default=None,
                        help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides in dotted form, e.g. model.seq_len=1024")

