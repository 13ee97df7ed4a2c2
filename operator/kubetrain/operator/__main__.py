"""``python -m kubetrain.operator``: run the operator against the cluster in KUBECONFIG (or in-cluster)."""

from __future__ import annotations

import argparse
import logging

import kopf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.operator", description=__doc__)
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="Kopf's liveness endpoint")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from kubetrain.operator import handlers, sweeps  # noqa: F401 - registers the handlers
    from kubetrain.operator.settings import OperatorConfig

    # Read once: the startup handler builds the runtime from this same config (one peering priority).
    cfg = OperatorConfig.from_env()
    kopf.run(
        clusterwide=not cfg.namespaces,
        namespaces=cfg.namespaces,
        standalone=cfg.standalone,
        peering_name=cfg.peering_name,
        priority=cfg.peering_priority,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(config=cfg),
    )


if __name__ == "__main__":
    main()
