"""kmtui: an operator workstation for HSM keys."""

__version__ = "0.1.0"
