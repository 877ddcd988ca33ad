"""QEMU scenarios: boot the kernel ELF in QEMU and check what it prints.

`x.py test` imports this package (with `tests/` on `sys.path`) and runs every
scenario in `scenarios.py`; `x.py run` and `x.py qemu-cmd` build their QEMU
command line with `machine.py`, so an interactive boot and a test boot are set
up the same way.

- `machine.py`   QEMU command lines: machine, firmware, accelerator, the
                 standard virtio devices, disk images, free host ports.
- `harness.py`   the `Scenario` description and the runner (serial log to a
                 file, timeouts, timings, verdicts, summary table).
- `scenarios.py` the scenario list: add a new one there (README.md in this
                 directory is the test author's guide, with every
                 test-only kernel command-line key).
- `kernel_builds.py` which kernel build (cargo features `selftest`,
                 `bench`) a boot needs, each build's ELF path, and the
                 `nm` check that the production kernel has no test code.
- `test_harness.py`, `test_kernel_builds.py`, ... unit tests of the above
                 (a harness that cannot fail is a defect too).

Standard library only (Python 3.11).
"""
