"""latent-reasoning: train and evaluate language models that reason in latent space."""

__version__ = "0.1.0"
