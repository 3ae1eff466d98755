"""What leaves the project: the HTML QC report, plots, dataset and model exports, batch prediction and batch QC of folders."""
