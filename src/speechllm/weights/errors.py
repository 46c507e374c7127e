class WeightsError(ValueError):
    """A weight file or directory is missing, corrupt, or of a kind we cannot load."""
