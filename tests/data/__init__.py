"""Tests of hareid.data: dataset layouts, loaders, the sampler, the synthetic benchmark."""
