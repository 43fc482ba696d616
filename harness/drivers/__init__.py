"""Device drivers of the harness (DESIGN.md section 8): one module per capability driver."""
