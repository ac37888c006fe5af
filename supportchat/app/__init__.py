"""Assembly of one node from the container (``supportchat.server``): the
URL tree (:mod:`.routes`) and the service tree (:mod:`.services`)."""
