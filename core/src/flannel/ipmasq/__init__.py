"""IP masquerade and forward rules (``--ip-masq``, ``--iptables-forward-rules``).

``rules`` computes flanneld's rule set, ``iptables`` and ``nftables`` install it,
``detect`` picks one (``--masq-backend``), ``manager.MasqManager`` runs the lifecycle.
"""

from flannel.ipmasq.detect import MASQ_BACKENDS, MasqDriver, MasqError, choose_driver
from flannel.ipmasq.iptables import IptablesDriver
from flannel.ipmasq.manager import MasqManager
from flannel.ipmasq.nftables import NftablesDriver
from flannel.ipmasq.rules import RuleSet, build_rule_set
from flannel.ipmasq.runner import CommandError, CommandResult, Runner, netns_runner, run_command

__all__ = [
    "MASQ_BACKENDS",
    "CommandError",
    "CommandResult",
    "IptablesDriver",
    "MasqDriver",
    "MasqError",
    "MasqManager",
    "NftablesDriver",
    "RuleSet",
    "Runner",
    "build_rule_set",
    "choose_driver",
    "netns_runner",
    "run_command",
]
