"""Tests of hareid.engine: the Trainer, losses, optimisers, fault injection."""
