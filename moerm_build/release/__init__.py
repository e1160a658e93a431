"""Release: the model folder and its card, and a folder fitted on your own data on top of a model."""
