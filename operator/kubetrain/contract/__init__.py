"""The contract between the operator and the trainer: the bottom layer, standard library only.

Both images import it and neither imports the other: the operator image has no torch, the
trainer image has no kopf. What crosses the boundary is defined here once:

- ``env``: the ``KUBETRAIN_*`` environment (:class:`TrainerContract`) and the termination-message path;
- ``vocabulary``: job phases, failure reasons and the trainer's exit codes, as enums;
- ``metric_names``: the trainer's and the operator's series and their label names (``trainingjob``, never ``job``);
- ``torchrun``: the elastic launcher's argv and rendezvous timeouts;
- ``store``: the rendezvous store's program (run as ``python -c`` in the store pod);
- ``noise_scale``: how the exported gradient noise scale is measured;
- ``ports``: the loopback port picker the local launcher and the dev tools share;
- ``result``: a completed worker's last figures, in its termination message.
"""

from kubetrain.contract.env import (  # noqa: F401 - the contract's names, importable from the package
    PREFIX,
    TERMINATION_MESSAGE_PATH,
    TrainerContract,
    env_names,
)
