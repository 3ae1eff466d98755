"""Label Studio labeling configs: build from a class list, load from a file, validate, parse."""
from label_config.config import (HOTKEYS, SUGGESTION_NAME, LabelConfigError, ParsedConfig, build_config,
                                 load_config, parse_config)

__all__ = ["HOTKEYS", "SUGGESTION_NAME", "LabelConfigError", "ParsedConfig", "build_config", "load_config",
           "parse_config"]
