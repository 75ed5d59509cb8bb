"""dgalign: decode-time alignment of language models to a reward.

Samples from p(y | c) · exp(β · r(c, y)) without fine-tuning: Diffusion-Guided Alignment (DGA)
and the baselines users would otherwise pick, behind one sampler signature.
"""

__version__ = "0.1.0"
