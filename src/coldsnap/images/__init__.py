"""CRIU-compatible images: framing (framing.py), directories (directory.py), pagemaps (pages.py),
parent chains and dedup (chain.py). Schemas in proto/, generated code in pb/ (tools/gen-protos)."""
