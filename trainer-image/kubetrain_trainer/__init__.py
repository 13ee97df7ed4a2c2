"""kubetrain's trainer: runs inside every worker pod under torchrun.

``python -m kubetrain_trainer`` is the entrypoint torchrun starts. It reads its
whole configuration from the ``KUBETRAIN_*`` environment
(:class:`kubetrain.contract.TrainerContract`) plus torchrun's own ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ...

Importing this package imports no torch: the torch-free modules
(:mod:`.local`, :mod:`.mfu`, :mod:`.failure`, :mod:`.config`, :mod:`.status`,
:mod:`.torchrun_args`) are usable from the CLI and the operator.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
