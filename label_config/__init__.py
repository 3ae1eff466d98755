"""Label Studio labeling configs: build from a class list, load from a file, validate, parse."""
from label_config.config import (HOTKEYS, QC_NOTE_FIELD, SUGGESTION_NAME, UNSEEN_TEXT, UNUSABLE, LabelConfigError,
                                 ParsedConfig, build_config, choice_result, load_config, parse_config,
                                 suggestion_phrase)

__all__ = ["HOTKEYS", "QC_NOTE_FIELD", "SUGGESTION_NAME", "UNSEEN_TEXT", "UNUSABLE", "LabelConfigError", "ParsedConfig",
           "build_config", "choice_result", "load_config", "parse_config", "suggestion_phrase"]
