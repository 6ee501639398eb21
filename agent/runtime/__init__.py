"""The container runtime layer: images, bundles, conmon and the OCI runtime CLI.

It knows containers, not executions: the executor drives it through ContainerManager.

Modules, one job each:

- binds: bind mounts resolved at each run beneath their allowed directory
- bundle: the container's config.json and its copy-on-write root filesystem
- cgroups: reading what the kernel recorded in a container's cgroup
- crilog: the CRI log format that conmon writes
- errors: the runtime layer's errors, one per phase
- imagefiles: reading a file of an image without leaving the image
- images: the local image store (shared blobs, one rootfs per digest)
- limits: what bounds every job by default, and where job cgroups live
- manager: ContainerManager, the layer's one entry point
- monitor: conmon, holding each container's stdio, log and exit code
- oci: the OCI runtime's command line (youki, runc, crun)
- process: helper commands run without blocking the event loop
- sealed: a sealed in-memory copy of the runtime's binary
- seccomp: the default seccomp profile, fitted to one job
- seccomp_rules: the syscalls a job may make, as data
- shifted: ownership-shifted image copies where a mount cannot be idmapped
- staging: a pull's private OCI layout
- storelock: locks for a store that more than one process writes
- syscalls: Linux system calls that Python's os module lacks
- userns: the user namespaces idmapped mounts take their mapping from
- volatile: the volatile directory, kept in memory
"""
