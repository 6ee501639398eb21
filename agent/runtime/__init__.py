"""The container runtime layer: images, bundles, conmon and the OCI runtime CLI.

It knows containers, not executions: the executor drives it through ContainerManager.
"""
