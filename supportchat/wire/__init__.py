"""The wire protocol: client frames parsed into typed classes, and the shapes of server frames."""
