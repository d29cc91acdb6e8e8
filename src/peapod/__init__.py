"""peapod: personalized prompt distillation (PeaPOD) for generative recommendation on T5."""

__version__ = "0.1.0"
