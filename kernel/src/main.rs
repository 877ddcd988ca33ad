//! # A teaching kernel for virtio
//!
//! `kernel_main` is where Rust begins: `boot/entry.rs` brought the CPU from the
//! PVH 32-bit entry into long mode and calls it with the physical address of
//! the PVH `hvm_start_info`. From here the kernel brings itself up in a fixed
//! order, each step relying only on the ones before it:
//!
//! ```text
//! serial      COM1, so everything after can be seen
//! boot        parse hvm_start_info -> BootInfo (memory map, cmdline, RSDP)
//! cmdline     key=value words from -append
//! logger      log crate -> serial, level from log=
//! cpu         GDT, TSS (IST stacks), IDT: exceptions are now reported
//! [fail=...]  selftest build only: deliberate panic / page fault (harness check)
//! clock       TSC calibration (timestamps in the log from here on)
//! memory      frames, the kernel's page tables, heap: `alloc` works after this
//! acpi        RSDP -> MADT, MCFG
//! interrupts  PIC masked, LAPIC, IOAPIC
//! smp         start the other CPUs (MADT, INIT-SIPI-SIPI): "cpus: N online"
//! virtio      find every virtio device (PCI, virtio-mmio); bring none up
//! iommu       DMA remapping (VT-d) for those devices, iommu=strict|passthrough|off
//! entropy     the virtio-rng driver, else RDSEED/RDRAND, else the TSC (entropy.rs)
//! net         the virtio-net driver brings each network card up (net/nic.rs)
//! [mode=...]  selftest / bench builds only: run them and exit QEMU
//! block       bring the disks up, name them vda, vdb, ... (block/mod.rs)
//! 9p          mount each virtio-9p host folder at /<mount_tag> (ninep.rs)
//! balloon     the virtio-balloon, followed from the idle loops (balloon.rs)
//! console     bring the virtio console up for the shell (shell/console.rs)
//! screen      virtio-gpu text screen and virtio-input keyboards (screen/mod.rs)
//!             then print "kernel: ready" and idle
//! ```
//!
//! docs/01-boot.md walks through the first half of this in detail.
//!
//! ## What sits beside the kernel
//!
//! The kernel `./x.py run` boots is built without cargo features: the steps
//! above and nothing else. Two features add what tests and measurements
//! need, each in modules of its own beside the code it concerns (the way
//! `#[cfg(test)] mod tests;` sits beside a module):
//!
//! - `selftest`: `mode=selftest` runs the in-guest self-tests
//!   (`selftest.rs`, and a `selftests` module in each subsystem) after the
//!   virtio probe and exits QEMU; `fail=panic|pagefault` lives there too.
//! - `bench`: `mode=bench` runs the benchmarks (`bench.rs`,
//!   `block/bench.rs`, `net/bench.rs`) against the peer stack (`peer/`, the
//!   `virtio-drivers` crate, linked only into this build) and exits QEMU.
//!
//! A kernel built without the feature a `mode=` asks for says so in one
//! line and exits QEMU with a failure status rather than boot on as if
//! nothing had been asked ([`refuse_modes_not_built`]).

#![no_std]
#![no_main]

extern crate alloc;

mod acpi_tables;
mod balloon;
#[cfg(feature = "bench")]
mod bench;
mod block;
mod boot;
mod bootinfo;
mod clock;
mod cmdline;
mod cpu;
mod entropy;
mod exit;
mod hal_impl;
mod interrupts;
mod iommu;
mod logger;
mod memory;
mod net;
mod ninep;
#[cfg(feature = "bench")]
mod peer;
mod per_queue_lock;
mod screen;
#[cfg(feature = "selftest")]
mod selftest;
#[cfg(feature = "selftest")]
mod selftest_api;
mod serial;
mod shell;
mod smp;
#[cfg(feature = "selftest")]
mod soak;
mod virtio;
mod wait;

use core::panic::PanicInfo;

/// Called by `boot/entry.rs` in 64-bit mode, on the boot stack, interrupts off.
pub extern "C" fn kernel_main(start_info_phys: u64) -> ! {
    serial::init();
    println!("kernel: booting (PVH), start info at {start_info_phys:#x}");

    let boot_info = match boot::init(start_info_phys) {
        Ok(info) => info,
        Err(error) => {
            println!("kernel: cannot boot: {error}");
            exit::qemu_exit(exit::EXIT_PANIC)
        }
    };
    cmdline::init(boot_info.cmdline);
    logger::init(cmdline::get("log"));
    refuse_modes_not_built();
    boot::log_summary();

    cpu::init();
    #[cfg(feature = "selftest")]
    selftest::fail_on_request();

    clock::init();
    memory::init(boot_info);
    acpi_tables::init(boot_info.rsdp);
    interrupts::init();
    smp::init();
    virtio::probe();
    iommu::init();
    entropy::init();
    net::claim_devices();

    // Neither returns: each exits QEMU when done.
    #[cfg(feature = "selftest")]
    if cmdline::get("mode") == Some("selftest") {
        selftest::run_all();
    }
    #[cfg(feature = "bench")]
    if cmdline::get("mode") == Some("bench") {
        bench::run_mode();
    }
    block::init();
    ninep::init();
    balloon::init();
    // `crash=records` (self-test build): the crash-consistency workload; does not return.
    #[cfg(feature = "selftest")]
    block::crash::run_if_asked();

    net::start();
    // `soak=on` (self-test build): block I/O under network load; does not return.
    #[cfg(feature = "selftest")]
    soak::run_if_asked();
    // Brought up before `kernel: ready`, so that every `virtio:` line (the
    // console's comes from its driver) precedes it; a device no driver took
    // is left reset, with its line.
    let console_ready = shell::console::init();
    screen::init();
    virtio::leave_untaken(None);
    println!("kernel: ready");
    // With a terminal (a virtio console, or a screen with a keyboard), the
    // shell takes the CPU (it runs the network rounds itself); it returns
    // only if no terminal turned out usable.
    if console_ready || screen::ready() {
        shell::run();
    }
    // The idle loop: runs the network stack, halts between interrupts.
    net::run()
}

/// The `mode=` values: each is built in by the cargo feature of the same
/// name, and this says whether this build has it and how to get one that does.
const MODES: [(&str, bool, &str); 2] = [
    (
        "selftest",
        cfg!(feature = "selftest"),
        "`./x.py build` prints the path of a kernel that has it",
    ),
    (
        "bench",
        cfg!(feature = "bench"),
        "`./x.py bench` builds and boots one",
    ),
];

/// A `mode=` this build cannot run ends the boot here, with one line that
/// says why and QEMU's failure status (`isa-debug-exit` value 0x11, status
/// 35): a test harness or a person who asked for self-tests must not get a
/// kernel that quietly boots on instead. An unknown mode is only a warning.
fn refuse_modes_not_built() {
    let Some(mode) = cmdline::get("mode") else {
        return;
    };
    match MODES.iter().find(|(name, _, _)| *name == mode) {
        Some((_, true, _)) => {}
        Some((name, false, how)) => {
            println!(
                "kernel: mode={name} is not in this build (built without the `{name}` feature); {how}"
            );
            exit::qemu_exit(exit::EXIT_SELFTEST_FAILED)
        }
        None => log::warn!("unknown mode={mode:?} ignored (known: selftest, bench)"),
    }
}

/// A panic on any CPU: the first CPU to fail stops the others (smp::stop) and prints one report;
/// a CPU that panics while another reports parks silently; a panic inside the report prints
/// one line.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    x86_64::instructions::interrupts::disable();
    // The serial lock may be held by whoever panicked: bypass it.
    let mut out = serial::emergency_writer();
    match smp::stop::begin_crash_report() {
        smp::stop::CrashRole::Report => {}
        smp::stop::CrashRole::Park => smp::stop::park_this_cpu(),
        smp::stop::CrashRole::Recursive => {
            let _ = writeln!(out, "\nPANIC while panicking: {}", info.message());
            exit::qemu_exit(exit::EXIT_PANIC);
        }
    }
    let (file, line) = info
        .location()
        .map_or(("<unknown>", 0), |l| (l.file(), l.line()));
    let _ = writeln!(out, "\nPANIC at {file}:{line}: {}", info.message());
    let _ = writeln!(
        out,
        "  on CPU {} of {} online",
        smp::current_cpu(),
        smp::online_cpus()
    );
    // The person at the virtio console sees it too (EMERG_WRITE, no queues).
    shell::console::emergency_print(format_args!(
        "\nPANIC at {file}:{line}: {}\n",
        info.message()
    ));
    let _ = write!(out, "  backtrace:");
    let _ = cpu::backtrace::write(&mut out, cpu::backtrace::current_rbp());
    let _ = writeln!(out);
    write_cpus_not_stopped(&mut out);
    exit::qemu_exit(exit::EXIT_PANIC)
}

/// The last line of a crash report when some other CPU did not park after the NMI.
pub fn write_cpus_not_stopped(out: &mut impl core::fmt::Write) {
    let running = smp::stop::still_running_mask();
    if running != 0 {
        let _ = writeln!(
            out,
            "  CPUs still running (did not take the stop NMI): {running:#x}"
        );
    }
}
