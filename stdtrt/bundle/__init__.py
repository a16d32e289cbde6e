"""The engine bundle: the contract between export and runtime (its manifest, its traced networks, the
model it was made from). Imports neither stage."""
