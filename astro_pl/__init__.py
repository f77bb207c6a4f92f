"""astro-pl: ASTRO (search-taught reasoning) as a PyTorch Lightning framework."""

__version__ = "0.1.0"
