"""ipsecd configuration: YAML file -> validated, immutable ``Config``.

``load_config(path)`` is the one entry point the daemon and ``ipsecd check``
use; every problem is a ``ConfigError`` reading ``FILE:LINE: key.path: message``.
The schema is documented in ``etc/ipsecd.yaml`` and the README (Configuration reference).
"""

from ipsecd.config.errors import ConfigError
from ipsecd.config.fields import parse_duration
from ipsecd.config.loader import load_config, parse_config
from ipsecd.config.schema import (
    AuthConfig,
    ChildConfig,
    Config,
    GatewayConfig,
    Identity,
    LogConfig,
    ManualSaConfig,
    PeerConfig,
)

__all__ = [
    "AuthConfig",
    "ChildConfig",
    "Config",
    "ConfigError",
    "GatewayConfig",
    "Identity",
    "LogConfig",
    "ManualSaConfig",
    "PeerConfig",
    "load_config",
    "parse_config",
    "parse_duration",
]
