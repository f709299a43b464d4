"""The policy language: loading with validation, conditions, and the classifier.

See docs/policy.md for the language reference.
"""

from processors.decision.policy.classifier import FALLBACK_MASK, PolicyClassifier, masks_for
from processors.decision.policy.conditions import Facts, dynamic_match, grant_matches, static_match
from processors.decision.policy.loader import load_policy, parse_policy
from processors.decision.policy.model import (
    FAIL_CLOSED_FINDINGS,
    FINDING_CODES,
    KNOWN_MASKS,
    RULE_STATEMENT_KINDS,
    ApprovalRequirement,
    ApprovalRule,
    Conditions,
    Glob,
    HoursWindow,
    IdentityClaims,
    Policy,
    PolicyError,
    Rule,
    RunAs,
    UnmaskGrant,
)
from processors.decision.policy.units import SIZE_UNITS, parse_duration, parse_glob, parse_hours, parse_size

__all__ = [
    "FAIL_CLOSED_FINDINGS",
    "FALLBACK_MASK",
    "FINDING_CODES",
    "KNOWN_MASKS",
    "RULE_STATEMENT_KINDS",
    "SIZE_UNITS",
    "ApprovalRequirement",
    "ApprovalRule",
    "Conditions",
    "Facts",
    "Glob",
    "HoursWindow",
    "IdentityClaims",
    "Policy",
    "PolicyClassifier",
    "PolicyError",
    "Rule",
    "RunAs",
    "UnmaskGrant",
    "dynamic_match",
    "grant_matches",
    "load_policy",
    "masks_for",
    "parse_duration",
    "parse_glob",
    "parse_hours",
    "parse_policy",
    "parse_size",
    "static_match",
]
