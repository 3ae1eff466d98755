import pytest
import tifffile

from trainer.cells.synthetic import make_field


@pytest.fixture(scope="session")
def synth():
    return make_field((384, 384), n=30, pairs=8, seed=1)


@pytest.fixture
def field_dir(tmp_path, synth):
    d = tmp_path / "fields"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", synth.image)
    return d
