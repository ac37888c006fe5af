"""Configuration: one dataclass per section, loaded from TOML and the environment.

The whole configuration is read and validated before any service starts; a
problem raises :class:`ConfigError` naming the file, the key and the reason.
"""

from supportchat.config.model import (
    AuthConfig,
    ChatConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    RedisConfig,
    ServerConfig,
    WebSocketConfig,
    load_command_config,
    load_config,
)

__all__ = [
    "AuthConfig",
    "ChatConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "RedisConfig",
    "ServerConfig",
    "WebSocketConfig",
    "load_command_config",
    "load_config",
]
