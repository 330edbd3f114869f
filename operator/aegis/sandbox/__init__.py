"""The local no-cluster environment: a Kubernetes API emulator, a Job runner and real servers."""
