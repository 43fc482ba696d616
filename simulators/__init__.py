"""Simulated hardware for the device agent, the device families, and the fleet runner."""
