"""What both methods share about the encoder and its latent space, owned by neither stage.

  encoder.py   the ViT encoder's config from an `encoder` section, its token grid
  sigreg.py    SIGReg, the isotropic-Gaussian regulariser (docs/reference.md §9)
  probe.py     ridge probes of frozen features to a state target
  geometry.py  measures of a frozen latent space on rendered frames (probe, distances, rank,
               cost landscape)
"""
