"""Configuration: the structured-config schema, its registration, and semantic checks."""

from maml_cli.config.paths import config_dir
from maml_cli.config.schema import register_configs
from maml_cli.config.validate import validate_eval_config, validate_run_config

__all__ = ["config_dir", "register_configs", "validate_eval_config", "validate_run_config"]
