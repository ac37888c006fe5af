from supportchat.tap import service_maker as supportchat  # noqa: F401  (twistd plugin)
