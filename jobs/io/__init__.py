"""Inputs and outputs: source datasets (`sources`, one reader per format in `readers`), object storage
(`storage`), the output layout with its commit protocol (`layout`) and job completion (`completion`)."""
