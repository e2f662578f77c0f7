"""MIL training: bags, tasks, covariates, the estimator, cross-validation and persistence (``pk.tl.MIL``)."""
