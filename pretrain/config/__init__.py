"""One validated config tree for every command.

* :mod:`~pretrain.config.schema`: the dataclasses (a docstring under every field);
* :mod:`~pretrain.config.loading`: YAML + ``key=value`` overrides -> a validated :class:`Config`;
* :mod:`~pretrain.config.validation`: value checks, each failure one line naming the key;
* :mod:`~pretrain.config.derived`: the batch algebra, computed once.
"""

from data_prep.atomic import atomic_write_bytes, atomic_write_text
from pretrain.config.derived import Derived, derive, slurm_procs_per_node
from pretrain.config.loading import (
    add_config_args,
    as_dict,
    config_from_dict,
    load_config,
    save_resolved,
    to_yaml,
)
from pretrain.config.schema import (
    CONFIG_DIR,
    DEFAULT_CONFIG,
    INIT_RECIPES,
    REPO_ROOT,
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    SlurmConfig,
    StackConfig,
    TrainConfig,
)
from pretrain.config.validation import validate

__all__ = [
    "CONFIG_DIR", "DEFAULT_CONFIG", "INIT_RECIPES", "REPO_ROOT", "CheckpointConfig", "Config", "ConfigError",
    "DataConfig", "Derived", "LoggingConfig", "ModelConfig", "OptimConfig", "ParallelConfig",
    "SlurmConfig", "StackConfig", "TrainConfig", "add_config_args", "as_dict", "atomic_write_bytes",
    "atomic_write_text", "config_from_dict", "derive", "slurm_procs_per_node", "load_config",
    "save_resolved", "to_yaml",
    "validate",
]
