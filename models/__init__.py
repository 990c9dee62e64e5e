"""The ML side of Spoke: ViT, data, training, export and inference backends.

Imports nothing from ``daemon`` or ``provisioning``: a data scientist can use it alone.
"""
