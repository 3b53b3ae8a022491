"""FreeCure's orchestration against a small host interface: foundation -> masks -> cure -> APG."""

from .host import Branch, CallHooks, CureError, CureInterrupted, Host
from .session import CurePlan, CureResult, CureSession, plan_cure, run_freecure

__all__ = [
    "Branch",
    "CallHooks",
    "CureError",
    "CureInterrupted",
    "CurePlan",
    "CureResult",
    "CureSession",
    "Host",
    "plan_cure",
    "run_freecure",
]
