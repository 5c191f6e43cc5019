"""The training engine: :class:`Trainer` runs a :class:`~hareid.config.Config` end to end.

* :mod:`~hareid.engine.trainer` - the loop (:class:`Trainer`).
* :mod:`~hareid.engine.state` - resume state (RNG), the run folder's lock and ownership rules.
* :mod:`~hareid.engine.logger` - metrics.jsonl, TensorBoard, progress bars, rank-0 messages.
* :mod:`~hareid.runtime` - device, mixed-precision dtype, seeds.
"""

from hareid.engine.state import RunFolder, get_rng_state, set_rng_state
from hareid.engine.trainer import Trainer
from hareid.runtime import resolve_amp, resolve_device, set_seed

__all__ = ["RunFolder", "Trainer", "get_rng_state", "resolve_amp", "resolve_device", "set_rng_state", "set_seed"]
