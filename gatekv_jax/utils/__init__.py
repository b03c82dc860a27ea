"""Utilities every layer may use: atomic file writes, device meshes and sharding rules."""
