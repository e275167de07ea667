"""The injector: a mutating admission webhook that adds the sidecar to annotated pods.

Layers, as in the sidecar itself (``.importlinter`` enforces them):

- pure: :mod:`~sidecar.injector.settings` (what the injector stamps into pods),
  :mod:`~sidecar.injector.annotations` (the ``token-sidecar.io/*`` catalogue and its parser),
  :mod:`~sidecar.injector.patch` (the pod as it should be after injection) and
  :mod:`~sidecar.injector.review` (``AdmissionReview`` in, response out);
- adapters: :mod:`~sidecar.injector.server` (HTTPS for ``/mutate``, plain HTTP for the probes
  and metrics) and :mod:`~sidecar.injector.metrics`;
- wiring: :mod:`~sidecar.injector.app`, started by ``token-sidecar injector``.

Nothing here is imported by the sidecar's own start-up.
"""
