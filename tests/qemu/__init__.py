"""QEMU scenarios: boot the kernel ELF in QEMU and check what it prints.

`x.py test` imports this package (with `tests/` on `sys.path`) and runs every
scenario in `scenarios.py`; `x.py run` and `x.py qemu-cmd` build their QEMU
command line with `machine.py`, so an interactive boot and a test boot are set
up the same way.

- `machine.py`   QEMU command lines: machine, firmware, accelerator, the
                 standard virtio devices, disk images, free host ports.
- `harness.py`   the `Scenario` description and the runner (serial log to a
                 file, timeouts, timings, verdicts, summary table).
- `scenarios.py` the scenario list: add a new one there.
- `test_harness.py` unit tests of the verdict logic (a harness that cannot
                 fail is a defect too).

Standard library only (Python 3.11).
"""
