"""Inputs and outputs: reading source datasets (`sources`), object storage (`storage`) and the
output layout with its commit protocol (`layout`)."""
