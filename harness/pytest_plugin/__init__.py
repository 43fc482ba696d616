"""The pytest plugin (entry point `fleetrig`): fixtures that start a platform for a test session."""
