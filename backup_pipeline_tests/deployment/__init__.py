"""What deploys: the Helm values, the image and Job commands, the coverage configuration."""
