"""The server: registry, PMS, fleet, end of life, jobs, device gateway, telemetry, package repository, REST API."""
