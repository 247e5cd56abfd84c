"""The endpoint store: every trained endpoint is kept once, content-addressed, and read by every trial that
needs it (:mod:`study.store.endpoints`), guarded by a cross-host lock file (:mod:`study.store.lock`).

Keys come from the caller (``TrialConfig.endpoint_key``, a hash of everything that determines the weights);
the store knows nothing about what an endpoint is, only how to keep its bytes safe."""

from study.store.endpoints import EndpointStore, StoredEndpoint

__all__ = ["EndpointStore", "StoredEndpoint"]
