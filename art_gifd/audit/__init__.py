"""
Privacy audits of a federated-learning model: ``art-gifd audit CONFIG`` or :func:`run_audit`.

An audit attacks the clients' shared updates of the user's model at every configured batch size and defence, measures
what each defence costs the training, and writes a report (``report.html``, ``report.json``, ``summary.md``). The
configuration format is documented in :mod:`art_gifd.audit.config`, the report and its risk rating in
:mod:`art_gifd.report.audit`.
"""

from art_gifd.audit.config import AuditConfig, AuditConfigError, ConfigProblem, load_audit_config
from art_gifd.audit.run import AuditReport, AuditRunError, run_audit

__all__ = [
    "AuditConfig",
    "AuditConfigError",
    "AuditReport",
    "AuditRunError",
    "ConfigProblem",
    "load_audit_config",
    "run_audit",
]
