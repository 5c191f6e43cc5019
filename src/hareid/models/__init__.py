"""Models: ``build_model(name, num_classes, **options)``, ``list_models()``, ``model_entry(name)``
(defaults: input size, mean/std, options), ``register_model``.

Registered: ``hacnn`` (HA-CNN), ``resnet18_harm``, ``resnet50_harm`` (torchvision ResNets with
harmonious attention). ``load_model(path)`` rebuilds one from a checkpoint. All share :class:`hareid.models.core.HarmNet` and its output contract.
"""

from hareid.models import hacnn as _hacnn  # noqa: F401  (registers "hacnn")
from hareid.models import resnet_harm as _resnet_harm  # noqa: F401  (registers the ResNets)
from hareid.models.core import HarmNet
from hareid.models.hacnn import HACNN
from hareid.models.loading import load_model, model_from_checkpoint
from hareid.models.registry import ModelEntry, build_model, list_models, model_entry, register_model
from hareid.models.resnet_harm import ResNetHarm

__all__ = ["HACNN", "HarmNet", "ModelEntry", "ResNetHarm", "build_model", "list_models", "load_model", "model_entry",
           "model_from_checkpoint", "register_model"]
