"""Mitogen's linear strategy, loaded from the installed `mitogen` package.

Mitogen documents pointing `strategy_plugins` at its own directory inside site-packages. This
shim lets ansible.cfg name a project path instead, so no machine-specific path is configured.
"""

from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # type: ignore[misc,valid-type]
    """Linear strategy whose workers talk to hosts through Mitogen."""
