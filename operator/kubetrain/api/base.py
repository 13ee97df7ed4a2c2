"""The base every API model inherits: camelCase aliases and paired validation rules.

A cross-field rule is declared once, as a ``Rule`` on the model it constrains.
The CRD generator emits its CEL expression as an ``x-kubernetes-validations``
entry, so the apiserver refuses bad objects at admission; the same rule's
Python ``check`` runs in pydantic, so ``kubetrain validate`` and ``kubetrain run``
refuse the same objects with the same message before anything reaches a cluster.
The integration tests feed every invalid example to both and compare.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel


class Rule(NamedTuple):
    cel: str
    # Names the offending field by its full path, so both the apiserver's and
    # pydantic's errors point at it.
    message: str
    # The Python twin of ``cel``. None for transition rules (they need the old
    # object, which only the apiserver has).
    check: Callable[[Any], bool] | None
    field_path: str | None = None


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _apply_cel_rules(self):
        # Only the rules declared on this very class: subclasses declare their own.
        for rule in type(self).__dict__.get("cel_rules", ()):
            if rule.check is not None and not rule.check(self):
                raise ValueError(rule.message)
        return self

    def to_k8s(self) -> dict[str, Any]:
        """The object as Kubernetes spells it: camelCase, no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def format_errors(exc: ValidationError) -> list[str]:
    """One line per error, each starting with the field's path (``spec.replicas.min: ...``)."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        path = path.replace(".[", "[")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}" if path else msg)
    return lines
