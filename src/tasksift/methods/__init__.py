"""Selection methods; see :mod:`tasksift.methods.registry`."""
