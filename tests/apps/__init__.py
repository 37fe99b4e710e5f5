"""Small applications the deployment-shape tests run in real processes."""
