"""The TrainingJob API: pydantic models, the CRD generated from them, manifest loading."""

from kubetrain.api.base import Rule, format_errors
from kubetrain.api.models import API_VERSION, GROUP, KIND, PLURAL, VERSION, TrainingJob, TrainingJobSpec

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "Rule", "TrainingJob", "TrainingJobSpec", "format_errors"]
