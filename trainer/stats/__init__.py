"""Statistics (torch-free): the quality estimate with intervals, classification metrics, OOD reference data, open-set scores, conformal sets, class proportions."""
