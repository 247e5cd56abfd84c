"""Studies on Ray Tune: the spec (:mod:`~study.sweep.spec`, validated and expanded with no Ray import), what
runs in the workers (:mod:`~study.sweep.trainables`), and the driver with its callbacks, progress line, Ray
session clean-up and Optuna search. Importing this package imports nothing heavy; its modules do."""
