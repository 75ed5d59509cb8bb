"""Diffusion-Guided Alignment: token-level diffusion in the LM's embedding space, guided by the reward.

schedule (§2.2, §2.4) · denoiser (§2.2) · kernel (§2.3) · value / proposal nets (§2.3, §2.5) ·
sampler (§2.7 and exact mode) · checkpoint (what `dgalign train` writes).
"""
