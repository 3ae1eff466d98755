"""RQ stores a job's function by its dotted name: every name a released scopeloop enqueued must
keep resolving to today's function, or jobs waiting in a lab's Redis during an upgrade fail."""
import pytest
from rq.utils import import_attribute

from ml_backend.queue import JOB_FUNC, PRUNE_FUNC
from trainer.models.embedding_jobs import DEFAULT_FACTORY, resolve
from trainer.models.embedding_jobs import JOB_FUNC as EMBED_FUNC

# name as enqueued by earlier releases -> the name enqueued today
RELEASED = {
    "scopeloop.refresh.refresh_job": JOB_FUNC,
    "scopeloop.refresh.prune_job": PRUNE_FUNC,
    "trainer.embedding_jobs.embed_chunk_job": EMBED_FUNC,
}


@pytest.mark.parametrize("old, new", sorted(RELEASED.items()))
def test_released_job_names_resolve_to_todays_functions(old, new):
    assert import_attribute(old) is import_attribute(new)
    assert callable(import_attribute(new))


def test_released_embedder_factory_names_resolve():
    """Chunk jobs carry their embedder factory as ``module:function`` in their arguments."""
    assert resolve("trainer.embedding_jobs:backbone_embedder") is resolve(DEFAULT_FACTORY)
