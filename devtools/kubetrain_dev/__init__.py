"""Development tools, outside both images: the local cluster (``devcluster``), the dashboard
preview (``preview``), and what tests and benchmarks share (``wait``, ``operator_process``; the one
port picker is :mod:`kubetrain.contract.ports`). Nothing in ``kubetrain`` or ``kubetrain_trainer`` imports this.
"""
