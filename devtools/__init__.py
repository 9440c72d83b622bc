"""Development tools: stand-ins for what a compute host provides (QEMU's
chardev, a masakari-api).  Used by the demo, tests and benchmarks; not shipped
in the packages."""
