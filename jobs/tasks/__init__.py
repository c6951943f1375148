"""The task types, one module each, plus the registry that names them (`registry`)."""
