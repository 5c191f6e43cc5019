"""The training engine: :class:`Trainer` runs a :class:`~hareid.config.Config` end to end."""

from hareid.engine.trainer import (
    Trainer,
    get_rng_state,
    resolve_amp,
    resolve_device,
    set_rng_state,
    set_seed,
)

__all__ = ["Trainer", "get_rng_state", "resolve_amp", "resolve_device", "set_rng_state", "set_seed"]
