"""Goodput-aware elastic scheduling across jobs: the pure core (issue 14).

Nothing here imports Kubernetes or torch, so the operator, the trace-driven
simulator (``bench/scheduling_sim.py``) and the unit tests run the same code:

- ``throughput_model``: step time against replicas, nodes spanned and per-replica
  batch (Pollux's model form), fitted from observed step times;
- ``efficiency``: statistical efficiency of a batch size from the gradient noise scale, and the
  noise scale estimator the trainer runs (the trainer image copies this module and this file:
  keep both stdlib only);
- ``goodput``: throughput x efficiency at each candidate replica count of one job;
- ``allocator``: replicas for every job from min to max, maximising a fairness-weighted
  sum of speedups with a restart penalty (plain dataclasses in and out);
- ``restart_cost``: what a resize costs a job, learned from its past resizes;
- ``placement``: which nodes hold a job's replicas (packing, for the simulator).

The operator runs the allocator over opted-in jobs: ``kubetrain.operator.allocation`` (docs/scheduling.md).
"""
