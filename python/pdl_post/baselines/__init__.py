"""Competitor implementations that benchmarks print beside ``pdl_post`` (DESIGN §4).

Each baseline lives in its own module and imports its heavy dependency (torch) only when that
module is imported, so ``import pdl_post.baselines`` stays light:

- :mod:`pdl_post.baselines.dense_torch`: the published algorithm as public PyTorch code does it
  (dense K x H*W distances, a Python loop over instances and over stuff classes).
"""
