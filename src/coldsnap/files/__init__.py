"""Open files of dumped tasks: the model, one registry, one operations class per kind.

Dump and restore both import this package; see registry.py (identity and ids), kinds.py
(the kind -> operations table) and images.py (files.img and friends).
"""
