"""Checkpoints of the drop-ins with ``track_usage``: they load across ``track_usage`` settings, as :class:`~ifsq_quant.FSQ`'s."""

from __future__ import annotations

import warnings

from torch import nn

__all__ = ["UsageCheckpoints"]


class UsageCheckpoints(nn.Module):
    """Mixin for a module with ``self.usage`` (a :class:`~ifsq_quant.usage.CodeUsage` or ``None``).

    A checkpoint of the original class (no usage counts) loads into a module with ``track_usage=True``,
    which keeps its own counts; a checkpoint with counts loads into one without, which ignores them.
    Both warn (the counts are statistics, not weights); ``strict=True`` holds for everything else.
    """

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        usage = getattr(self, "usage", None)
        usage_keys = [key for key in state_dict if key.startswith(prefix + "usage.")]
        if usage is not None and not usage_keys:
            state_dict.update(usage.state_dict(prefix=prefix + "usage."))
            warnings.warn(f"{prefix}usage: the checkpoint has no usage counts (saved without track_usage); this module keeps "
                          "its own counts", stacklevel=4)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if usage is None and usage_keys:
            for key in usage_keys:
                if key in unexpected_keys:
                    unexpected_keys.remove(key)
            warnings.warn(f"{prefix}usage: the checkpoint has usage counts but this module was built with track_usage=False; "
                          "they were not loaded", stacklevel=4)
