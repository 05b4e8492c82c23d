"""rnnsweep: a reproducible sweep over gated recurrent cells for byte-level language modelling."""

__version__ = "0.1.0"
