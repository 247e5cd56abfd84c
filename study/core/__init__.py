"""The trial core: pure PyTorch science, a trial as a function of its config.

Data sets, models with their permutation specs, symmetry removal, alignment, paths, BatchNorm policy, attacks,
the one training loop, evaluation, metrics, the trial config and :func:`study.core.trial.run`. Nothing here
imports Ray, MLflow, Optuna or the store/sweep/tracking/CLI layers (a contract checked by the test suite), so
the core runs anywhere torch does, a GPU box without the orchestration stack included.
"""
