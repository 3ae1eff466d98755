"""scopeloop trainer: everything that turns images and labels into models and numbers.

Subpackages, lowest first (docs/architecture.md; tests/test_layers.py keeps the order):
`io` (image reading), `stats` (estimates, metrics, OOD reference data, open-set scores,
conformal sets, class proportions), `store` (embedding-space ids, the embedding cache, the model
registry, a project's work directory), `quality` (image QC), `models` (backbones, features,
heads, training, inference; the only place torch is imported), `reports` (QC report, plots,
exports, batch prediction), `cells` (cells from fields of view). Importing `trainer` or any
torch-free subpackage does not import torch.
"""
