"""The project store (torch-free): embedding-space ids, the embedding cache, the model registry, a project work directory and its state files."""
