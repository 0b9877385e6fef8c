"""Checks of one served model against its ``config.pbtxt``, manifest and reference data.

A generated repository claims things (names, dtypes, dims, max batch, accuracy within the
manifest's tolerances, shapes the profiles cover, a batcher that batches). Each check asks the
live server whether the claim holds and returns a ``CheckResult``; none raises for a model
problem, so one bad model never hides the results of the others. Every request carries a
timeout (HTTP ``network_timeout``, gRPC ``client_timeout``) so a wedged server cannot hang a run.

Layout: ``target`` (what a check gets: the model's claims and clients), ``wire`` (requests,
dtypes, output comparison), ``registry`` (the checks in run order with their needs), and one
module per check or small family, each registering its checks when imported here. What a check
returns (``CheckResult``, ``CheckStatus``) is ``aitune_triton.validate.result``.
"""

from aitune_triton.validate.checks import (  # noqa: F401 - imported to register their checks
    accuracy,
    bad_requests,
    batching,
    edge_shapes,
    metadata,
    raw_pipeline,
    ready,
    version_stamp,
)
