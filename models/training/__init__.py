"""Pre-training at the hub and its evaluation (see ``pretrain``, ``evaluate``, ``foundation``).

Imports nothing from ``daemon`` or ``provisioning``; a notebook can call these directly.
"""
