"""MLflow: the study's layout there (:mod:`study.tracking.schema`, for writers and readers) and the driver-side
writer (:mod:`study.tracking.tracker`). Only the driver writes; trials never talk to MLflow."""
