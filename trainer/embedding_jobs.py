"""RQ job-name alias: jobs enqueued before the move to `trainer.models.embedding_jobs` name
`trainer.embedding_jobs.embed_chunk_job` and their embedder factory
`trainer.embedding_jobs:backbone_embedder`; they may still sit in a lab's Redis during an upgrade."""
from trainer.models.embedding_jobs import backbone_embedder, embed_chunk_job

__all__ = ["backbone_embedder", "embed_chunk_job"]
