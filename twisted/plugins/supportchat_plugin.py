from supportchat.tap import reuseport_parser, service_maker as supportchat  # noqa: F401  (twistd plugins)
