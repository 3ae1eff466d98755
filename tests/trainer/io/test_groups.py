"""One home for an image's group from a file-name pattern, with the three callers' rules kept explicit."""
from pathlib import Path

import pytest

from trainer.io.groups import group_of


def test_first_capture_group_else_whole_match_on_the_file_name():
    assert group_of("Neutrophil/slide07_cell3.png", r"slide(\d+)") == "07"
    assert group_of("Neutrophil/slide07_cell3.png", r"slide\d+") == "slide07"
    assert group_of(Path("/data/a/slide07_cell3.png"), r"^a") is not None  # the folder is never matched
    assert group_of(Path("/data/a/slide07_cell3.png"), r"^a", unmatched="own-name") == "slide07_cell3.png"


def test_unmatched_images_follow_the_callers_rule():
    key = "Lymphocyte/odd.png"
    assert group_of(key, r"slide(\d+)", unmatched="own-key") == key           # refresh estimate
    assert group_of(key, r"slide(\d+)", unmatched="own-name") == "odd.png"    # scopeloop train
    assert group_of(key, r"slide(\d+)", unmatched="shared") == ""             # dataset export
    with pytest.raises(ValueError, match="unmatched"):
        group_of(key, r"x", unmatched="mine")
